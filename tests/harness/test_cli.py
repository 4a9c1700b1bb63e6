"""End-to-end runs of `python -m harness` as a user would type them."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.cli_checks import check_group_choices
from harness.data import CALIB_DIR, EVAL_DIR
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[2]


def harness(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    code = (EVAL_DIR / "code_py.txt").read_text()
    (d / "A.txt").write_text(code[: len(code) // 2])
    (d / "B.txt").write_text(code[len(code) // 2 :])
    (d / "CAL.txt").write_text((CALIB_DIR / "code.txt").read_text())
    return d


def test_public_contract_line(tiny_llama_dir, texts, tmp_path):
    out = tmp_path / "OUT"
    r = harness("method=rtn", "calib=file", f"calib.path={texts / 'CAL.txt'}", "eval=perplexity",
                f"eval.texts=[{texts / 'A.txt'},{texts / 'B.txt'}]", f"hydra.run.dir={out}",
                "model=path", f"model.path={tiny_llama_dir}", "calib.n_samples=4", "calib.seqlen=64",
                "eval.seqlen=128", "eval.max_windows=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert {"method", "suite", "task", "metric", "value", "stderr", "n"} <= set(df.columns)
    ppl = df[df.metric == "ppl_token"]
    assert sorted(ppl.method.unique()) == ["fp", "rtn"]
    assert sorted(ppl.task.unique()) == ["A", "B"]
    assert (ppl.n == 3).all() and (ppl.seqlen == 128).all()
    quant, fp = df[df.method == "rtn"], df[df.method == "fp"]
    assert (quant.calib_samples == 4).all() and (quant.calib_seqlen == 64).all()
    assert (fp.calib == "none").all() and (fp.calib_samples == 0).all()  # FP reads no calibration
    assert (ppl.value > 1).all() and ppl.value.notna().all()
    for f in ("config.yaml", "results.parquet", "report.md"):
        assert (out / f).is_file()
    # a second run of the same model reuses the cached FP reference: identical FP numbers
    out2 = tmp_path / "OUT2"
    r2 = harness("method=rtn", "method.bits=3", "method.group_size=32", "eval=perplexity",
                 f"eval.texts=[{texts / 'A.txt'}]", f"hydra.run.dir={out2}", "model=path",
                 f"model.path={tiny_llama_dir}", "calib=code", "calib.n_samples=2", "calib.seqlen=64",
                 "eval.seqlen=128", "eval.max_windows=3", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-2000:]
    df2 = pd.read_csv(out2 / "results.csv")
    fp_a = lambda d: d[(d.method == "fp") & (d.task == "A")].value.item()  # noqa: E731
    assert fp_a(df2) == fp_a(df)
    assert (df2[df2.method == "rtn"].bits == 3).all()
    # the report collects both runs into one table
    rep = subprocess.run([sys.executable, "-m", "harness.report", str(out), str(out2)], capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    assert "rtn w4 g64" in rep.stdout and "rtn w3 g32" in rep.stdout and "| A |" in rep.stdout


@pytest.mark.parametrize("args, needle", [
    (["method=awk"], "unknown method 'awk'; choose one of: awq, awq_clip, awq_gptq, awq_scale, fp, gptq, gptqmodel_awq, gptqmodel_gptq, hqq, llmc_awq, llmc_gptq, rtn, salience"),
    (["method=awq", "method.loss=mse"], "method.loss='mse' is not valid for method=awq; choose one of: linear, block"),
    (["method=awq", "method.clip_refine=-1"], "method.clip_refine=-1: choose a number of passes, 0 or more"),
    (["method=awq_gptq", "method.search_damp=-0.1"],
     "method.search_damp=-0.1: choose a share of the mean diagonal, 0 or more"),
    (["method=awq_gptq", "method.max_shrink=1.5"], "method.max_shrink=1.5: choose a share of the range in [0, 1)"),
    (["method=awq", "method.n_grid=0"], "method.n_grid=0: choose a whole number of grid points, at least 1"),
    (["method=gptq", "method.max_shrink=-0.1"], "method.max_shrink=-0.1: choose a share of the range in [0, 1)"),
    (["method=gptq", "method.clip_range=both"], "method.clip_range='both' is not valid for method=gptq; choose one of: asymmetric, symmetric"),
    (["method=gptq", "method.act_order=desc"], "method.act_order='desc' is not valid for method=gptq; choose one of: static, off, group"),
    (["method=hqq", "method.symmetric=true"], "method=hqq optimises asymmetric zero points"),
    (["method=hqq", "export.dir=/tmp/qh-never-written"], "export.dir: hqq's optimised zero points are fractional"),
    (["model=nope"], "unknown model 'nope'; choose one of: gemma3-270m, hub, path, smollm2-135m"),
    (["calib=poetry"], "unknown calib 'poetry'; choose one of:"),
    (["eval=huge"], "unknown eval 'huge'; choose one of: full, lm_eval, perplexity, quick"),
    (["method.bitz=3"], "unknown option method.bitz"),
    (["method=awq", "method.duo_scaling=maybe"], "method.duo_scaling='maybe': expected true or false"),
    (["method=awq", "method.n_grid=ten"], "method.n_grid='ten': expected a whole number"),
    (["sanity.max_ppl_ratio=big"], "sanity.max_ppl_ratio='big': expected a number"),
    (["eval.code.sandbox.wall_seconds=slow"], "eval.code.sandbox.wall_seconds='slow': expected a number"),
    (["method.bits=9"], "bits=9 is not supported; choose an integer in 2..8"),
    (["calib=file", "calib.path=/nonexistent/cal.txt"], "calibration file not found"),
    (["eval.texts=[/nonexistent/a.txt]"], "eval text not found"),
    (["model=path", "model.path=/nonexistent"], "is not a Hugging Face model directory"),
    (["model=hub", "model.hub_id=someone/some-model"], "cannot load 'someone/some-model' from the Hugging Face hub"),
    (["calib=file", "calib.path=/bin/ls"], "calibration file /bin/ls is a binary file (NUL bytes), not text"),
    (["store_dir=/proc/x"], "store_dir=/proc/x is not a writable directory"),
    (["cache_dir=/proc/x"], "cache_dir=/proc/x is not a writable directory"),
    (["variants=[fp,awk]"], "unknown method in variants 'awk'; choose one of:"),
    (["calib.n_samples=0"], "calib.n_samples must be >= 1"),
    (["calib=file"], "calib=file needs calib.path=FILE"),
])
def test_bad_input_is_one_line_without_traceback(args, needle, tmp_path):
    out = tmp_path / "OUT"
    r = harness(*args, f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [r.stderr.strip().splitlines()[-1]]
    assert not (out / "results.csv").exists() and not out.exists()


def test_value_check_takes_what_hydra_takes():
    ok = ["method=awq", "method.duo_scaling=Yes", "method.clip=0", "method.n_grid=1_0", "seed=0x10",
          "sanity.max_ppl_ratio=inf", "method.max_shrink=3", "export.dir=null", "method.bits=4,3",
          "method.n_grid=${seed}", "hydra.run.dir=/tmp/x", "variants=[fp,rtn]", "method.search_damp='0.1'"]
    check_group_choices(ok)
    with pytest.raises(HarnessError, match=r"method.clip='nope': expected true or false"):
        check_group_choices(["method=awq,gptq", "method.clip=true,nope"])
    with pytest.raises(HarnessError, match=r"seed='1.5': expected a whole number"):
        check_group_choices(["seed=1.5"])


@pytest.mark.parametrize("run_dir", ["/proc/x", "/sys/x", "/proc/x/y"])
def test_unwritable_run_directory_is_one_line(run_dir, tmp_path):
    r = harness(f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.stderr.strip() == f"error: hydra.run.dir={run_dir} is not a writable directory " + r.stderr.split("directory ")[1].strip()
    assert not (tmp_path / "results").exists()  # nothing created on the way


def test_bad_group_size_and_short_text_on_a_real_model(tiny_llama_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short to hold a window.")
    for args, needle in [
        (["method.group_size=48"], "group_size=48 does not divide in_features=64"),
        ([f"eval.texts=[{short}]"], "fewer than the 512 tokens of one window (eval.seqlen)"),
    ]:
        out = tmp_path / "OUT"
        r = harness("model=path", f"model.path={tiny_llama_dir}", f"hydra.run.dir={out}", *args, cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not out.exists()


def write_bad_files(d: Path) -> dict[str, Path]:
    d.mkdir()
    (d / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 100)
    (d / "digits.txt").write_text("0123456789 " * 200)
    return {"latin1": d / "latin1.txt", "digits": d / "digits.txt"}


def test_non_text_input_files_are_refused_before_the_model_loads(tmp_path):
    bad = write_bad_files(tmp_path / "bad")
    for args, needle in [
        ([f"eval.texts=[{bad['latin1']}]"], "is not UTF-8 text (invalid byte at offset 3)"),
        (["calib=file", f"calib.path={bad['digits']}", "method=awq"], "does not look like text (0% letters"),
    ]:
        r = harness("model=path", "model.path=/nonexistent-never-loaded", f"hydra.run.dir={tmp_path / 'OUT'}", *args,
                    cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "OUT").exists()


def test_unreadable_model_files_are_named(tiny_llama_dir, tmp_path):
    import shutil

    for name, damage in [("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
                         ("config.json", lambda p: p.write_text("{not json"))]:
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(tiny_llama_dir, broken)
        damage(broken / name)
        r = harness("model=path", f"model.path={broken}", f"hydra.run.dir={tmp_path / 'OUT'}",
                    f"store_dir={tmp_path / 'store'}", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert r.stderr.strip().splitlines()[-1].startswith(f"error: model file {broken / name} is unreadable")
        assert not (tmp_path / "OUT").exists() and not list((tmp_path / "store").rglob("*.parquet"))


def test_existing_results_survive_a_failed_rerun(tiny_llama_dir, texts, tmp_path):
    out = tmp_path / "OUT"
    common = ["model=path", f"model.path={tiny_llama_dir}", f"hydra.run.dir={out}", "eval=perplexity",
              f"eval.texts=[{texts / 'A.txt'}]", "eval.seqlen=64", "eval.max_windows=2", "calib=code",
              "calib.n_samples=2", "calib.seqlen=32"]
    assert harness(*common, cwd=tmp_path).returncode == 0
    before = (out / "results.csv").read_bytes()
    r = harness(*common, "method.group_size=48", cwd=tmp_path)
    assert r.returncode == 2
    assert (out / "results.csv").read_bytes() == before


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path):
    out = tmp_path / "OUT"
    r = harness("method=rtn", "+experiment=smoke", f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]",
                f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    fp = df[df.method == "fp"].value.item()
    rtn = df[df.method == "rtn"].value.item()
    assert 1 < fp < rtn < 3 * fp  # 4-bit RTN costs something, but not the model
    assert (df.model == "smollm2-135m").all() and "Q4_1" in df.model_note.iloc[0]
