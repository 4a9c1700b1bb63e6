"""The Triton kernel against the torch reference: through TRITON_INTERPRET=1 on CPU, compiled on a
CUDA machine when run with TRITON_INTERPRET=0 (``make gpu-check``).

Tolerance: the kernel and the reference multiply the same weights (dequantized in fp32, rounded to
the activation dtype) in fp32 and differ only in summation order, so outputs may differ by one
rounding of the output dtype: rtol = finfo(dtype).eps (one unit in the last place), plus
atol = 1e-4 * max|y| for fp32 summation-order noise on entries that cancel to near zero.
"""
import pytest
import torch

import kernels.w4a16 as w4a16
from kernels.pack import pack_awq
from kernels.w4a16 import W4A16Error, w4a16_matmul, w4a16_reference
from tests.kernels.conftest import random_qweight

K, N = 256, 80  # N = 80 leaves a partial 64-wide column tile


def _close(y, ref):
    assert y.dtype == ref.dtype and y.shape == ref.shape
    eps = torch.finfo(ref.dtype).eps
    torch.testing.assert_close(y.float(), ref.float(), rtol=eps, atol=1e-4 * ref.float().abs().max().item())


DEVICE = "cpu" if w4a16.INTERPRETED else "cuda"  # the compiled kernel takes CUDA tensors


def _case(M, group_size, dtype, seed=0, device=DEVICE):
    packed = pack_awq(random_qweight(N, K, group_size, seed))
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return x.to(device), type(packed)(*(t.to(device) for t in packed))


def test_interpreter_is_on_without_cuda():
    if not torch.cuda.is_available():
        assert w4a16.INTERPRETED, "tests/kernels/conftest.py must set TRITON_INTERPRET=1 before kernels.w4a16 is imported"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("M", [1, 3, 17])
def test_kernel_matches_reference(M, group_size, dtype):
    x, packed = _case(M, group_size, dtype)
    _close(w4a16_matmul(x, *packed, group_size), w4a16_reference(x, *packed, group_size))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", [
    dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=4, GROUP_M=2),  # split-K with atomic adds
    dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1, GROUP_M=2),  # one program per tile, direct store
])
def test_pinned_configs_match_reference(config, dtype):
    x, packed = _case(41, 64, dtype, seed=5)
    _close(w4a16_matmul(x, *packed, 64, config=config), w4a16_reference(x, *packed, 64))


def test_wide_path_for_larger_m():
    x, packed = _case(40, 128, torch.float16, seed=7)  # M > SKINNY_MAX_M: wide configs, fp16 output store
    assert x.shape[0] > w4a16.SKINNY_MAX_M
    _close(w4a16_matmul(x, *packed, 128), w4a16_reference(x, *packed, 128))


def test_strided_activations():
    x, packed = _case(6, 64, torch.float16, seed=9)
    x_t = x.t().contiguous().t()  # same values, column-major
    _close(w4a16_matmul(x_t, *packed, 64), w4a16_reference(x, *packed, 64))


def test_reference_is_the_quantizer_formula():
    qw = random_qweight(N, K, 64, seed=11)
    x = torch.randn(5, K).half()  # the reference is plain torch: CPU
    expected = (x.float() @ qw.dequantize().half().float().t()).half()
    assert torch.equal(w4a16_reference(x, *pack_awq(qw), 64), expected)


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(w4a16, "INTERPRETED", False)
    x, packed = _case(2, 64, torch.float16, device="cpu")
    with pytest.raises(W4A16Error, match="needs a CUDA tensor.*TRITON_INTERPRET=1"):
        w4a16_matmul(x, *packed, 64)


def test_bad_inputs_are_clear_errors():
    x, packed = _case(2, 64, torch.float16)
    with pytest.raises(W4A16Error, match="float16 or bfloat16"):
        w4a16_matmul(x.float(), *packed, 64)
    with pytest.raises(W4A16Error, match="features"):
        w4a16_matmul(x[:, :128], *packed, 64)
    with pytest.raises(W4A16Error, match="do not match"):
        w4a16_matmul(x, *packed, 128)
    with pytest.raises(W4A16Error, match="BLOCK_K=128 must divide"):
        w4a16_matmul(x, *packed, 64, config=dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1, GROUP_M=1))
