"""Sweeps through the CLI on a tiny model: resumable after kill -9, the submitit local launcher, and
bit-identical results for the same config and seed."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from harness import store
from harness.data import EVAL_DIR

BITS = ["2", "3", "4", "8"]


def tiny_args(tiny_llama_dir):
    return ["model=path", f"model.path={tiny_llama_dir}", "eval=perplexity", f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]",
            "eval.seqlen=64", "eval.max_windows=2", "calib=code", "calib.n_samples=2", "calib.seqlen=32"]


def sweep_cmd(tiny_llama_dir, *extra):
    return [sys.executable, "-m", "harness", "--multirun", "method=rtn", f"method.bits={','.join(BITS)}",
            "hydra.sweep.dir=sweep", *tiny_args(tiny_llama_dir), *extra]


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def stored(root):
    return store.files(root / "results" / "store")


def kill_when(proc, done, deadline_s=600):
    deadline = time.monotonic() + deadline_s
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def methods_of(files):
    return [pd.read_parquet(f).method.unique().tolist() for f in files]


def test_sweep_killed_mid_way_resumes_without_duplicates(tiny_llama_dir, tmp_path):
    proc = subprocess.Popen(sweep_cmd(tiny_llama_dir), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when(proc, lambda: len(stored(tmp_path)) >= 2)  # FP and the first RTN config are stored
    done_before = stored(tmp_path)
    assert 2 <= len(done_before) <= len(BITS), "the sweep must be killed part-way"
    assert all(len(m) == 1 for m in methods_of(done_before))  # a store file is one whole variant

    r = subprocess.run(sweep_cmd(tiny_llama_dir), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("[harness] skip rtn: config") == len(done_before) - 1
    after = stored(tmp_path)
    assert set(done_before) <= set(after) and len(after) == len(BITS) + 1  # FP once, each width once
    rows = store.load(tmp_path / "results" / "store", history=True)
    assert len(rows) == len(BITS) + 1 and (rows.method == "fp").sum() == 1
    assert sorted(rows[rows.method == "rtn"].bits.astype(int).astype(str)) == BITS
    assert not rows.duplicated(subset=["config_hash", "method", "task", "metric"]).any()


def test_variants_in_one_process_resume_after_kill(tiny_llama_dir, tmp_path):
    """variants=[fp,rtn,awq,gptq]: one model load; killed after the second variant is stored, the rerun
    redoes only the unfinished ones and still writes one results table with all four."""
    cmd = [sys.executable, "-m", "harness", "variants=[fp,rtn,awq,gptq]", "method.bits=3", "hydra.run.dir=run",
           *tiny_args(tiny_llama_dir)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    kill_when(proc, lambda: len(stored(tmp_path)) >= 2)
    done_before = methods_of(stored(tmp_path))
    assert [["fp"], ["rtn"]] == sorted(done_before) or len(done_before) == 3, done_before

    r = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("loaded path once") == 1 and "for 4 variant(s)" in r.stdout
    assert r.stdout.count("[harness] skip ") == len(done_before)
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert sorted(table.method.unique()) == ["awq", "fp", "gptq", "rtn"]
    assert set(table[table.method != "fp"].bits.astype(int)) == {3}
    rows = store.load(tmp_path / "results" / "store", history=True)
    assert len(stored(tmp_path)) == 4 and not rows.duplicated(subset=["config_hash", "task", "metric"]).any()
    layers = pd.read_parquet(tmp_path / "run" / "layers.parquet")
    assert {"awq", "gptq"} - set(done_before[0] + done_before[-1]) <= set(layers.method)


def test_two_job_sweep_through_submitit_local_launcher(tiny_llama_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    r = subprocess.run([sys.executable, "-m", "harness", "--multirun", "hydra/launcher=local", "method=fp,rtn",
                        "hydra.sweep.dir=sweep", *tiny_args(tiny_llama_dir)],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Submitit 'local' sweep output dir" in r.stdout + r.stderr
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # the jobs really went through submitit
    rows = store.load(tmp_path / "results" / "store")
    assert sorted(rows.method.unique()) == ["fp", "rtn"] and rows.config_hash.nunique() == 2
    for job in ("0_fp", "1_rtn"):
        assert (tmp_path / "sweep" / job / "results.csv").is_file()


def test_same_config_and_seed_are_bit_identical(tiny_llama_dir, tmp_path):
    """Two independent runs (separate FP caches, so FP is evaluated twice) of AWQ, whose search is
    the most order-sensitive method: every value and stderr identical to the last bit."""
    frames = []
    for i in (1, 2):
        out = tmp_path / f"run{i}"
        r = subprocess.run([sys.executable, "-m", "harness", "method=awq", f"hydra.run.dir={out}",
                            f"cache_dir={tmp_path / f'cache{i}'}", f"store_dir={tmp_path / f'store{i}'}", "seed=3",
                            *tiny_args(tiny_llama_dir)], cwd=tmp_path, env=env(), capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        frames.append(pd.read_parquet(out / "results.parquet").sort_values(["method", "task", "metric"]))
    a, b = frames
    assert len(a) == 2 and a.config_hash.tolist() == b.config_hash.tolist()
    assert a["value"].tolist() == b["value"].tolist() and a["stderr"].tolist() == b["stderr"].tolist()


@pytest.mark.parametrize("args, needle", [
    (["method=rtn", "+experiment=paper"], "cannot load Salesforce/wikitext (test) for hub:wikitext2 via `datasets`"),
    (["method=awq", "calib=pile_val", "eval=perplexity", f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]"],  # awq reads it
     "cannot load mit-han-lab/pile-val-backup (validation) for hub:pile_val"),
])
def test_paper_protocol_data_fails_offline_in_one_line(tiny_llama_dir, tmp_path, args, needle):
    r = subprocess.run([sys.executable, "-m", "harness", "model=path", f"model.path={tiny_llama_dir}",
                        f"hydra.run.dir={tmp_path / 'out'}", *args], cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and not (tmp_path / "out" / "results.csv").exists()
