import pytest
import torch

from harness import bench_decode
from tests.conftest import tiny_model


def test_decode_timing_runs_a_real_cached_decode():
    model = tiny_model("llama", seed=0)
    assert bench_decode.decode_tokens_per_second(model, torch.tensor([[1, 2, 3, 4]]), new_tokens=4) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_refuses_without_a_gpu(capsys):
    assert bench_decode.main(["--tokens", "2"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
