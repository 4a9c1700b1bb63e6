"""The Slurm launcher for real: tiny sweeps submitted to a Slurm cluster (in CI the one-node cluster
that .ci/slurm-up starts on this machine) through `python -m harness --multirun hydra/launcher=slurm`.

The jobs run one at a time (array_parallelism=1): the first stores the FP reference and the others
find it, and two torch processes never share the two cores. Skipped only where no cluster answers."""
import os
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from harness import store
from tests.harness.test_sweep import tiny_args

BITS = ["2", "3", "4"]
# one cluster node: the two sweeps run one after the other, on one pytest-xdist worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("slurm")
# a CPU-only job that fits any node: the preset asks for a GPU, 8 CPUs and 64 GB
CPU_JOB = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
           "hydra.launcher.timeout_min=10", "hydra.launcher.array_parallelism=1"]
CLIENTS = ("sinfo", "squeue", "sbatch", "srun", "scancel", "sacct")
READY = {"idle", "mixed", "allocated", "completing"}
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED", "RESIZING"}


def cluster_problem() -> str | None:
    """Why no Slurm cluster can take this test's jobs, or None."""
    missing = [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    for cmd, what in ((["sinfo", "-h", "-o", "%T"], "sinfo"), (["sacct", "-n", "-X", "-j", "1"], "sacct (accounting)")):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return f"{what} did not answer within 20 s"
        if r.returncode != 0:
            return f"{what} failed: {(r.stderr.strip().splitlines() or ['exit ' + str(r.returncode)])[-1]}"
        if what == "sinfo" and not READY & set(r.stdout.split()):
            return f"no node takes jobs (sinfo states: {' '.join(r.stdout.split()) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    problem = cluster_problem()
    if problem:
        pytest.skip(f"no Slurm cluster to submit to ({problem}); .ci/slurm-up starts a one-node one here")


def sweep_cmd(tiny_llama_dir, sweep_dir):
    return [sys.executable, "-m", "harness", "--multirun", "hydra/launcher=slurm", "method=rtn",
            f"method.bits={','.join(BITS)}", f"hydra.sweep.dir={sweep_dir}", *tiny_args(tiny_llama_dir), *CPU_JOB]


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def stored(root) -> dict:
    """Store file -> (method, bits) for every file in the store under ``root``."""
    out = {}
    for f in store.files(root / "results" / "store"):
        rows = pd.read_parquet(f)
        assert rows.method.nunique() == 1 and rows.config_hash.nunique() == 1  # one file, one whole variant
        m = rows.method.iloc[0]
        out[f] = (m, None if m == "fp" else str(int(rows.bits.iloc[0])))
    return out


def array_id(sweep_dir) -> str | None:
    """The Slurm job id of the sweep's job array (submitit names its folder after it)."""
    found = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.name.isdigit()] if sweep_dir.exists() else []
    return found[0] if found else None


def queue_state(job: str) -> str:
    """The job's state in the controller's queue ('' once it has left)."""
    r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def states(job: str) -> list[str]:
    """``TASK|STATE`` of each task of the array in accounting (which may trail the queue a little)."""
    r = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job], capture_output=True, text=True,
                       timeout=30)
    rows = [line.split("|") for line in r.stdout.splitlines() if "|" in line]
    return sorted(f"{task}|{(state.split() or [''])[0]}" for task, state in rows)  # "CANCELLED by 0" -> CANCELLED


def finished(job: str) -> bool:
    """Every task of the array has left the queue and accounting shows how each ended."""
    return not queue_state(job) and all(s.split("|")[1] not in ACTIVE for s in states(job) or ["|PENDING"])


def wait_for(done, what: str, proc=None, deadline_s=600, every=0.1):
    deadline = time.monotonic() + deadline_s
    while not done():
        assert proc is None or proc.poll() is None, f"the sweep ended before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def job_logs(sweep_dir, job: str) -> dict:
    """Array task index -> its stdout (the harness's lines)."""
    return {int(p.parent.name.split("_")[1]): p.read_text() for p in (sweep_dir / ".submitit").glob(f"{job}_*/*_log.out")}


def check_store(files: dict):
    assert sorted(files.values(), key=str) == sorted([("fp", None)] + [("rtn", b) for b in BITS], key=str)
    rows = store.load(next(iter(files)).parents[2], history=True)
    assert rows.config_hash.nunique() == len(files) == len(BITS) + 1  # FP once, each width once
    assert not rows.duplicated(subset=["config_hash", "method", "task", "metric"]).any()


def test_three_config_sweep_runs_on_slurm(slurm, tiny_llama_dir, tmp_path):
    r = subprocess.run(sweep_cmd(tiny_llama_dir, "sweep"), cwd=tmp_path, env=env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Submitit 'slurm' sweep output dir" in r.stdout + r.stderr
    job = array_id(tmp_path / "sweep")
    assert job, "submitit wrote no job folder"
    wait_for(lambda: finished(job), f"job {job} to finish", every=0.5)
    assert states(job) == [f"{job}_{i}|COMPLETED" for i in range(len(BITS))]  # three Slurm jobs ran
    check_store(stored(tmp_path))
    for i, bits in enumerate(BITS):
        assert (tmp_path / "sweep" / f"{i}_rtn" / "results.csv").is_file()
        assert f"rtn w{bits} g" in job_logs(tmp_path / "sweep", job)[i]


def test_cancelled_job_is_the_only_one_rerun(slurm, tiny_llama_dir, tmp_path):
    """scancel the first job while it runs: the launcher fails at once, the other two jobs still run
    (the second stores FP); the same sweep submitted again runs only the cancelled config, and the
    store holds each config once."""
    proc = subprocess.Popen(sweep_cmd(tiny_llama_dir, "sweep1"), cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: array_id(tmp_path / "sweep1"), "the job array to be submitted", proc)
        first = array_id(tmp_path / "sweep1")
        task = f"{first}_0"
        log = tmp_path / "sweep1" / ".submitit" / task / f"{task}_0_log.out"
        # running: Slurm started it and its Python process is up (it stores FP some seconds later)
        wait_for(lambda: queue_state(task) == "RUNNING" and log.is_file() and "Starting with" in log.read_text(),
                 f"{task} to start", proc)
        subprocess.run(["scancel", task], check=True, timeout=30)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "CANCELLED" in err, err[-3000:]  # the launcher reports the cancelled job
    wait_for(lambda: finished(first), f"job {first} to finish", every=0.5)  # KillWait: SIGTERM is ignored
    assert states(first) == [f"{task}|CANCELLED", f"{first}_1|COMPLETED", f"{first}_2|COMPLETED"]
    before = stored(tmp_path)
    assert sorted(before.values(), key=str) == sorted([("fp", None)] + [("rtn", b) for b in BITS[1:]], key=str), \
        f"the cancelled job should not have stored its config: {sorted(before.values(), key=str)}"
    mtimes = {f: f.stat().st_mtime_ns for f in before}

    r = subprocess.run(sweep_cmd(tiny_llama_dir, "sweep2"), cwd=tmp_path, env=env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    job = array_id(tmp_path / "sweep2")
    wait_for(lambda: finished(job), f"job {job} to finish", every=0.5)
    assert states(job) == [f"{job}_{i}|COMPLETED" for i in range(len(BITS))]
    after = stored(tmp_path)
    assert {f: f.stat().st_mtime_ns for f in before} == mtimes  # nothing stored before was rewritten
    assert [after[f] for f in set(after) - set(before)] == [("rtn", BITS[0])]  # only the cancelled config ran
    check_store(after)
    logs = job_logs(tmp_path / "sweep2", job)
    assert sorted(logs) == list(range(len(BITS)))
    for i, out in logs.items():
        skips = re.findall(r"\[harness\] skip (\w+): config already complete", out)
        assert skips == (["fp"] if i == 0 else ["fp", "rtn"]), (i, out[-2000:])
