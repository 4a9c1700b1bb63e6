"""W4A16 GEMM for AWQ-GEMM packed weights: ``y = x @ dequant(W).T`` in Triton, plus a torch reference.

Shapes (K = in_features, N = out_features, g = group size):
    x       fp16/bf16 ``[M, K]``
    qweight int32     ``[K, N/8]``   (AWQ nibble order, see kernels/pack.py)
    qzeros  int32     ``[K/g, N/8]``
    scales  fp16      ``[K/g, N]``
    y       x.dtype   ``[M, N]``

Each program dequantizes a ``[BLOCK_K, BLOCK_N]`` weight tile with ``(q - zero) * scale`` in fp32,
rounds it to the activation dtype (as the reference does) and accumulates ``tl.dot`` in fp32.
Two autotuned launchers share the kernel, keyed on a power-of-two bucket of M:
  * skinny (M <= SKINNY_MAX_M, decode): split-K — programs along grid axis 1 take every
    SPLIT_K-th K block and ``atomic_add`` their partial sums into an fp32 output;
  * wide (larger M): one program per output tile, stored directly in x's dtype.
A K block never straddles two quantization groups (``group_size % BLOCK_K == 0``), so each block
loads one row of zeros and scales.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.pack import PACK, unpack_awq

SKINNY_MAX_M = 32
MIN_GROUP = 32  # smallest BLOCK_K of the configs below
# The Triton interpreter is chosen when the kernel is decorated, i.e. at import of this module.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


class W4A16Error(RuntimeError):
    """The W4A16 kernel cannot run on these inputs or on this device."""


@triton.jit
def _round_to_bf16(w):
    """Round fp32 values to the nearest bfloat16 (ties to even), keeping them in fp32."""
    bits = w.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _w4a16_kernel(
    x_ptr, qw_ptr, qz_ptr, s_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk,
    stride_qwk, stride_qwn,
    stride_qzg, stride_qzn,
    stride_sg, stride_sn,
    stride_ym, stride_yn,
    M_BUCKET,  # autotune key only
    GROUP_SIZE: tl.constexpr,
    EMULATE_BF16: tl.constexpr,  # interpreter only, see w4a16_matmul
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped ordering of output tiles so neighbouring programs reuse weight tiles in L2.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_m = (pid // pids_per_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # AWQ order 0,2,4,6,1,3,5,7: column j of a pack lives in nibble (j % 2) * 4 + j // 2.
    col = offs_n % 8
    shifts = ((col % 2) * 4 + col // 2) * 4
    pack_n = offs_n // 8

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        packed = tl.load(qw_ptr + offs_k[:, None] * stride_qwk + pack_n[None, :] * stride_qwn,
                         mask=mask_k[:, None] & mask_n[None, :], other=0)
        group = k0 // GROUP_SIZE
        zeros = tl.load(qz_ptr + group * stride_qzg + pack_n * stride_qzn, mask=mask_n, other=0)
        scales = tl.load(s_ptr + group * stride_sg + offs_n * stride_sn, mask=mask_n, other=0.0)

        q = (packed >> shifts[None, :]) & 0xF
        z = (zeros >> shifts) & 0xF
        w = (q - z[None, :]).to(tl.float32) * scales.to(tl.float32)[None, :]
        if EMULATE_BF16:
            acc = tl.dot(x.to(tl.float32), _round_to_bf16(w), acc)
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)

    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    mask_y = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_y)
    else:
        tl.atomic_add(y_ptrs, acc, mask=mask_y)


def _config(bm, bn, bk, split_k, warps, stages, group_m=8):
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k, GROUP_M=group_m),
                         num_warps=warps, num_stages=stages)


SKINNY_CONFIGS = [
    _config(16, 64, 32, 1, 4, 4),
    _config(16, 64, 64, 1, 4, 4),
    _config(16, 128, 64, 1, 4, 4),
    _config(16, 64, 32, 2, 4, 4),
    _config(16, 64, 64, 2, 4, 3),
    _config(16, 128, 32, 4, 4, 4),
    _config(16, 64, 128, 4, 4, 3),
    _config(16, 64, 64, 4, 4, 4),
    _config(16, 128, 128, 8, 4, 3),
    _config(32, 64, 64, 4, 4, 3),
    _config(32, 128, 32, 2, 4, 4),
]
WIDE_CONFIGS = [
    _config(32, 64, 64, 1, 4, 4),
    _config(64, 64, 32, 1, 4, 4),
    _config(64, 128, 32, 1, 4, 4),
    _config(64, 128, 64, 1, 4, 3),
    _config(128, 64, 32, 1, 4, 4),
    _config(128, 128, 32, 1, 8, 3),
    _config(128, 128, 64, 1, 8, 3),
    _config(128, 256, 32, 1, 8, 3),
]


def _fits_group(configs, named_args, **kwargs):
    """Keep configs whose K block lies inside one quantization group."""
    group_size = kwargs["GROUP_SIZE"]
    return [c for c in configs if group_size % c.kwargs["BLOCK_K"] == 0]


_AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "GROUP_SIZE"]
_skinny = triton.autotune(SKINNY_CONFIGS, key=_AUTOTUNE_KEY, reset_to_zero=["y_ptr"],
                          prune_configs_by={"early_config_prune": _fits_group})(_w4a16_kernel)
_wide = triton.autotune(WIDE_CONFIGS, key=_AUTOTUNE_KEY,
                        prune_configs_by={"early_config_prune": _fits_group})(_w4a16_kernel)


def _check_inputs(x, qweight, qzeros, scales, group_size):
    if x.dim() != 2:
        raise W4A16Error(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise W4A16Error(f"x must be float16 or bfloat16, got {x.dtype}")
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise W4A16Error(f"qweight/qzeros must be int32, got {qweight.dtype}/{qzeros.dtype}")
    K, N = qweight.shape[0], qweight.shape[1] * PACK
    if x.shape[1] != K:
        raise W4A16Error(f"x has {x.shape[1]} features but qweight expects K={K}")
    if group_size < MIN_GROUP or K % group_size or group_size % MIN_GROUP:
        raise W4A16Error(f"group_size={group_size} must be a multiple of {MIN_GROUP} that divides K={K}")
    if tuple(qzeros.shape) != (K // group_size, N // PACK) or tuple(scales.shape) != (K // group_size, N):
        raise W4A16Error(f"qzeros {tuple(qzeros.shape)} / scales {tuple(scales.shape)} do not match "
                         f"K={K}, N={N}, group_size={group_size}")
    devices = {t.device for t in (x, qweight, qzeros, scales)}
    if len(devices) != 1:
        raise W4A16Error(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if not x.is_cuda and not INTERPRETED:
        raise W4A16Error(f"the Triton W4A16 kernel needs a CUDA tensor (got {x.device}); on CPU use "
                         "w4a16_reference / QuantLinear's torch path, or set TRITON_INTERPRET=1 before "
                         "importing kernels.w4a16 to run the (slow) Triton interpreter")
    return K, N


def _m_bucket(M: int) -> int:
    return min(triton.next_power_of_2(M), 4096)


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 group_size: int, config: dict | None = None) -> torch.Tensor:
    """``x @ dequant(W).T`` for AWQ-GEMM packed ``W``.

    ``config`` (keys BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, GROUP_M, optional num_warps/num_stages)
    pins one launch configuration instead of autotuning; under the interpreter, where timing is
    meaningless, the first fitting config of the M bucket is used when none is given.
    """
    K, N = _check_inputs(x, qweight, qzeros, scales, group_size)
    M = x.shape[0]
    skinny = M <= SKINNY_MAX_M
    if config is None and INTERPRETED:
        configs = _fits_group(SKINNY_CONFIGS if skinny else WIDE_CONFIGS, {}, GROUP_SIZE=group_size)
        config = dict(configs[0].kwargs)
    if config is not None:
        if group_size % config["BLOCK_K"]:
            raise W4A16Error(f"BLOCK_K={config['BLOCK_K']} must divide group_size={group_size}")
        split_k = config["SPLIT_K"]
    else:
        split_k = None  # chosen by the autotuner; skinny launches may split K

    # The interpreter (Triton 3.9) multiplies the raw bits of bf16 tl.dot operands and truncates
    # fp32->bf16 casts. Under it, bf16 runs round the weight tile to bf16 with integer ops, feed
    # tl.dot exact fp32 tiles and leave the final rounding to torch: the same numbers as on a GPU.
    emulate_bf16 = INTERPRETED and x.dtype == torch.bfloat16
    # Split-K programs add partial sums atomically, so they need a zeroed fp32 output.
    split = skinny if split_k is None else split_k > 1
    y = (torch.zeros((M, N), device=x.device, dtype=torch.float32) if split or emulate_bf16
         else x.new_empty((M, N)))

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

    args = (x, qweight, qzeros, scales, y, M, N, K,
            x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
            qzeros.stride(0), qzeros.stride(1), scales.stride(0), scales.stride(1),
            y.stride(0), y.stride(1), _m_bucket(M))
    if config is not None:
        _w4a16_kernel[grid](*args, GROUP_SIZE=group_size, EMULATE_BF16=emulate_bf16, **config)
    else:
        (_skinny if skinny else _wide)[grid](*args, GROUP_SIZE=group_size, EMULATE_BF16=emulate_bf16)
    return y.to(x.dtype) if y.dtype != x.dtype else y


def w4a16_reference(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """The same product in torch: unpack, ``(q - zero) * scale`` (methods.quantizer), round the
    weight to x's dtype as the kernel does, multiply in fp32, return x's dtype."""
    w = unpack_awq(qweight, qzeros, scales, group_size).dequantize().to(x.dtype)
    return (x.float() @ w.float().t()).to(x.dtype)
