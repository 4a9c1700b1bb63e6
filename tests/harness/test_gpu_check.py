import subprocess
import sys

import pytest
import torch

from harness import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_stops_at_once_with_one_line():
    out = subprocess.run([sys.executable, "-m", "harness.gpu_check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == gpu_check.EXIT_NO_CUDA
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert lines == ["gpu-check: no CUDA device found (torch.cuda.is_available() is False); run it on a GPU machine"]


def test_the_steps_fit_the_eight_minute_budget(tmp_path):
    steps = gpu_check.steps(tmp_path)
    assert sum(s.limit_s for s in steps) <= 8 * 60
    assert any("kernels.bench" in s.argv for s in steps)
    assert all("model.device=cuda" in s.argv for s in steps if "harness" in s.argv)


def test_a_failing_step_is_reported_not_raised(tmp_path):
    row = gpu_check.run_step(gpu_check.Step("boom", [sys.executable, "-c", "print('x'); raise SystemExit(4)"], 30), tmp_path)
    assert row["status"] == "failed (exit 4)" and row["last line"] == "x"
    row = gpu_check.run_step(gpu_check.Step("slow", [sys.executable, "-c", "import time; time.sleep(5)"], 1), tmp_path)
    assert row["status"] == "timed out after 1s"
    assert "| boom |" not in gpu_check.table([row])
