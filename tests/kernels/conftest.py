"""Kernel tests run on CPU: the Triton kernel goes through the interpreter.

TRITON_INTERPRET is read when ``@triton.jit`` decorates a kernel, i.e. when kernels.w4a16 is first
imported, so it is set here, before any test module imports it.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from methods.quantizer import QuantizedWeight, QuantSpec  # noqa: E402


def random_qweight(out_features: int, in_features: int, group_size: int, seed: int = 0) -> QuantizedWeight:
    """Uniformly random codes and zero points (all of 0..15 occur) with fp16-representable scales."""
    gen = torch.Generator().manual_seed(seed)
    groups = in_features // group_size
    codes = torch.randint(0, 16, (out_features, in_features), generator=gen, dtype=torch.uint8)
    zero = torch.randint(0, 16, (out_features, groups), generator=gen).float()
    scale = (torch.rand(out_features, groups, generator=gen) * 0.1 + 1e-3).half().float()
    return QuantizedWeight(codes, scale, zero, QuantSpec(bits=4, group_size=group_size))
