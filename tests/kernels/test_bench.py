"""kernels.bench: the CPU smoke path (Triton interpreter) and its refusals; speed is measured on GPUs only."""
import pandas as pd
import pytest
import torch

from kernels import bench


def test_smoke_run_writes_a_correct_table(tmp_path, capsys):
    assert bench.main(["--smoke", "--m", "1,3", "--group-size", "64", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "w4a16_smoke_g64_float16.csv")
    assert len(df) == 2 * len(bench.SMOKE_SHAPES["smoke"])
    assert set(df.M) == {1, 3} and (df.device == "cpu-interpreter").all()
    assert (df.rel_err < 2 * torch.finfo(torch.float16).eps).all()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_speed_run_without_gpu_is_a_one_line_error(capsys):
    assert bench.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err and "--smoke" in err


def test_bad_group_size_is_refused(tmp_path, capsys):
    assert bench.main(["--smoke", "--group-size", "48", "--out", str(tmp_path)]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_kernel_bytes_counts_every_tensor_once():
    # M=1, K=N=128, g=64, fp16: x 256 B, qweight 8192 B, zeros 2*128/2 B, scales 2*128*2 B, y 256 B
    assert bench.kernel_bytes(1, 128, 128, 64, 2) == 256 + 8192 + 128 + 512 + 256
