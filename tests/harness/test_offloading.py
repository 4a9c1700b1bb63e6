"""harness/offloading.py: model.offload=cpu|disk through the whole session, and its one-line refusals."""
import pandas as pd
import pytest

from harness import plan as plan_mod
from harness import session as session_mod
from tests.harness.test_cli import harness
from tests.harness.test_session import tiny_cfg

COMPARED = ["method", "suite", "task", "metric", "value", "stderr", "n"]


def session_rows(cfg) -> pd.DataFrame:
    variants = [plan_mod.Variant(plan_mod.method_config(m), cfg.calib) for m in ("fp", "rtn", "awq", "gptq")]
    outcomes = session_mod.run(cfg, variants, "run", resume=False)
    return session_mod.combined(outcomes)[0]


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_offloaded_session_gives_the_same_numbers(offload, tmp_path, tiny_llama_dir):
    base = session_rows(tiny_cfg(tiny_llama_dir, tmp_path / "none"))
    off = session_rows(tiny_cfg(tiny_llama_dir, tmp_path / offload, f"model.offload={offload}",
                                f"model.offload_dir={tmp_path / 'scratch'}"))
    assert set(off.offload) == {offload} and set(base.offload) == {"none"}
    key = ["method", "suite", "task", "metric"]
    pd.testing.assert_frame_equal(base[COMPARED].sort_values(key).reset_index(drop=True),
                                  off[COMPARED].sort_values(key).reset_index(drop=True))
    assert set(base.config_hash).isdisjoint(off.config_hash)  # recorded in the hash too


@pytest.mark.parametrize("args, needle", [
    (["model.offload=gpu"], "unknown model.offload 'gpu'; choose one of: none, cpu, disk"),
    (["model.offload=disk", "method=rtn", "export.dir=/tmp/qh-never-written"],
     "export.dir packs every layer's codes at once; it does not run with model.offload=disk"),
    (["model.offload=cpu", "method=llmc_awq"], "method=llmc_awq runs the peer tool's own code"),
    (["model.offload=disk", "model.device_map=auto"], "model.offload=disk places layers itself; drop model.device_map=auto"),
    (["model.offload=disk", "model.offload_dir=/proc/x"], "model.offload_dir=/proc/x is not a writable directory"),
    (["model=hub", "model.hub_id=someone/some-model", "model.offload=disk"],
     "cannot fetch 'someone/some-model' from the Hugging Face hub for model.offload=disk"),
])
def test_offload_mistakes_are_one_line_before_loading(args, needle, tmp_path):
    r = harness(*args, f"hydra.run.dir={tmp_path / 'OUT'}", cwd=tmp_path)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("setting", ["model.offload=disk", "model.device_map=auto"])
def test_generation_suite_is_the_same_offloaded_or_placed_by_accelerate(setting, tmp_path, tiny_llama_dir):
    suite = ["eval.suites=[perplexity,json]", "eval.json.n_prompts=2", "eval.json.max_new_tokens=6"]
    variants = lambda cfg: [plan_mod.Variant(plan_mod.method_config(m), cfg.calib) for m in ("fp", "rtn")]  # noqa: E731
    rows = []
    for extra in ([], [setting]):
        cfg = tiny_cfg(tiny_llama_dir, tmp_path / str(len(rows)), *suite, *extra)
        rows.append(session_mod.combined(session_mod.run(cfg, variants(cfg), "run", resume=False))[0])
    key = ["method", "suite", "task", "metric"]
    assert "json" in set(rows[0].suite)
    pd.testing.assert_frame_equal(rows[0][COMPARED].sort_values(key).reset_index(drop=True),
                                  rows[1][COMPARED].sort_values(key).reset_index(drop=True))


def test_disk_offload_of_a_checkpoint_without_safetensors_is_one_line(tmp_path, tiny_llama_dir):
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_llama_dir, legacy)
    (legacy / "model.safetensors").unlink()
    r = harness("model=path", f"model.path={legacy}", "model.offload=disk", f"hydra.run.dir={tmp_path / 'OUT'}", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
    assert "model.offload=disk reads safetensors files" in r.stderr and "use model.offload=cpu" in r.stderr, r.stderr
