"""4-bit packing between ``methods.quantizer.QuantizedWeight`` and the AWQ-GEMM / GPTQ tensor layouts.

A ``QuantizedWeight`` holds ``codes`` uint8 ``[out, in]``, ``scale`` and ``zero`` ``[out, in/g]``;
dequantization is ``(codes - zero) * scale`` in both layouts below. Eight 4-bit values share one
int32: the value in "nibble" k occupies bits ``4k .. 4k+3``.

AWQ "GEMM" (AutoAWQ ``WQLinear_GEMM``, transformers, vLLM ``awq``):
    qweight int32 ``[in, out/8]``  8 output columns per int32, nibble k holds column ``AWQ_ORDER[k]``
    qzeros  int32 ``[in/g, out/8]`` same packing, the zero point stored as-is
    scales  fp16  ``[in/g, out]``

GPTQ (AutoGPTQ / GPTQModel ``checkpoint_format="gptq"``, vLLM ``gptq``):
    qweight int32 ``[in/8, out]``  8 consecutive input rows per int32, row k in nibble k
    qzeros  int32 ``[in/g, out/8]`` 8 consecutive output columns per int32, column k in nibble k
    scales  fp16  ``[in/g, out]``
    g_idx   int32 ``[in]``          group of every input row (``arange(in) // g``; no act-order)
  Zero points: ``zero_format="v1"`` (default) stores ``zero - 1``, which is what AutoGPTQ writes and
  what v1 loaders undo by adding 1 to the nibble (exllama/vLLM kernels, GPTQModel's v1->v2 conversion).
  A nibble cannot hold -1, so ``zero == 0`` is not representable in v1 and packing raises.
  ``zero_format="v2"`` stores ``zero`` unchanged (GPTQModel's internal ``gptq_v2`` format).
"""
from __future__ import annotations

import sys
from typing import NamedTuple

import torch

from methods.quantizer import QuantizedWeight, QuantSpec

BITS = 4
PACK = 32 // BITS  # values per int32
MAXQ = 2**BITS - 1
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k holds column AWQ_ORDER[k] of its pack
SEQUENTIAL_ORDER = tuple(range(PACK))
GPTQ_ZERO_FORMATS = ("v1", "v2")
if sys.byteorder != "little":  # the byte views below assume it (as do the checkpoint formats' producers)
    raise ImportError("kernels.pack assumes a little-endian machine")


class PackError(ValueError):
    """A weight or packed tensor that the 4-bit layouts cannot represent."""


class AWQTensors(NamedTuple):
    qweight: torch.Tensor  # int32 [in, out/8]
    qzeros: torch.Tensor  # int32 [in/g, out/8]
    scales: torch.Tensor  # fp16 [in/g, out]


class GPTQTensors(NamedTuple):
    qweight: torch.Tensor  # int32 [in/8, out]
    qzeros: torch.Tensor  # int32 [in/g, out/8]
    scales: torch.Tensor  # fp16 [in/g, out]
    g_idx: torch.Tensor  # int32 [in]


# ----------------------------------------------------------------------------------------------
# nibble packing along the last dimension


def pack_nibbles(values: torch.Tensor, order=SEQUENTIAL_ORDER) -> torch.Tensor:
    """Pack integers in ``[0, 15]`` along the last dim: ``[..., 8n] -> int32 [..., n]``.

    Nibble k of each int32 receives column ``order[k]`` of its group of 8. Built byte by byte: on a
    little-endian machine byte b of a word holds nibble 2b in its low and nibble 2b+1 in its high half.
    """
    *lead, width = values.shape
    if width % PACK:
        raise PackError(f"cannot pack a last dimension of {width} values; it must be a multiple of {PACK}")
    nibbles = values.to(torch.uint8).reshape(*lead, width // PACK, PACK)[..., list(order)]
    words = nibbles[..., 0::2] | (nibbles[..., 1::2] << BITS)  # [..., n, 4] bytes
    return words.contiguous().view(torch.int32).squeeze(-1)


def unpack_nibbles(words: torch.Tensor, order=SEQUENTIAL_ORDER) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: int32 ``[..., n] -> uint8 [..., 8n]`` in column order."""
    if words.dtype != torch.int32:
        raise PackError(f"packed tensors must be int32, got {words.dtype}")
    as_bytes = words.contiguous().reshape(-1).view(torch.uint8).reshape(*words.shape, 4)
    nibbles = torch.stack([as_bytes & MAXQ, as_bytes >> BITS], dim=-1).reshape(*words.shape, PACK)
    inverse = sorted(range(PACK), key=lambda k: order[k])  # column j lives in nibble inverse[j]
    return nibbles[..., inverse].reshape(*words.shape[:-1], words.shape[-1] * PACK)


# ----------------------------------------------------------------------------------------------
# checks shared by both layouts


def _check_quantized(qw: QuantizedWeight) -> int:
    """Validate a weight for 4-bit packing; returns its group length along the input dim."""
    if qw.spec.bits != BITS:
        raise PackError(f"only 4-bit weights can be packed (AWQ/GPTQ int32 layouts); got bits={qw.spec.bits}")
    if qw.codes.dim() != 2:
        raise PackError(f"codes must be a 2-D [out, in] matrix, got shape {tuple(qw.codes.shape)}")
    out_features, in_features = qw.codes.shape
    qw.spec.check(in_features)
    g = qw.spec.group_len(in_features)
    groups = (out_features, in_features // g)
    if tuple(qw.scale.shape) != groups or tuple(qw.zero.shape) != groups:
        raise PackError(f"scale/zero must have shape {groups} for codes {tuple(qw.codes.shape)} and group size {g}; "
                        f"got {tuple(qw.scale.shape)} and {tuple(qw.zero.shape)}")
    if out_features % PACK:
        raise PackError(f"out_features={out_features} must be a multiple of {PACK} to pack 8 columns per int32")
    if int(qw.codes.max()) > MAXQ:
        raise PackError(f"codes exceed the 4-bit range [0, {MAXQ}] (max {int(qw.codes.max())})")
    z = qw.zero
    if bool((z != z.round()).any()) or bool((z < 0).any()) or bool((z > MAXQ).any()):
        raise PackError(f"zero points must be integers in [0, {MAXQ}]")
    return g


def _scales_fp16(scale: torch.Tensor) -> torch.Tensor:
    s = scale.t().contiguous().to(torch.float16)
    if not bool(torch.isfinite(s).all()):
        raise PackError("a scale does not fit in float16 (|scale| > 65504 or not finite); checkpoints store fp16 scales")
    return s


def _spec(group_size: int, where: str) -> QuantSpec:
    if not isinstance(group_size, int) or group_size < 1:
        raise PackError(f"{where}: group_size must be a positive integer, got {group_size!r}")
    return QuantSpec(bits=BITS, group_size=group_size, symmetric=False)


def _expect(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype | None = torch.int32) -> None:
    if tuple(t.shape) != tuple(shape):
        raise PackError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise PackError(f"{name} has dtype {t.dtype}, expected {dtype}")


def _expect_float(name: str, t: torch.Tensor, shape: tuple) -> None:
    _expect(name, t, shape, dtype=None)
    if not t.is_floating_point():
        raise PackError(f"{name} must be a floating-point tensor, got {t.dtype}")


# ----------------------------------------------------------------------------------------------
# AWQ GEMM layout


def pack_awq(qw: QuantizedWeight) -> AWQTensors:
    """``QuantizedWeight`` -> AWQ-GEMM ``(qweight [in, out/8], qzeros [in/g, out/8], scales [in/g, out])``."""
    _check_quantized(qw)
    qweight = pack_nibbles(qw.codes.t(), AWQ_ORDER)
    qzeros = pack_nibbles(qw.zero.t(), AWQ_ORDER)
    return AWQTensors(qweight, qzeros, _scales_fp16(qw.scale))


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> QuantizedWeight:
    """AWQ-GEMM tensors -> ``QuantizedWeight`` (scale as float32, zero as float32 integers)."""
    spec = _spec(group_size, "unpack_awq")
    in_features, out_features = qweight.shape[0], qweight.shape[1] * PACK
    if in_features % group_size:
        raise PackError(f"group_size={group_size} does not divide in_features={in_features}")
    n_groups = in_features // group_size
    _expect("qweight", qweight, (in_features, out_features // PACK))
    _expect("qzeros", qzeros, (n_groups, out_features // PACK))
    _expect_float("scales", scales, (n_groups, out_features))
    codes = unpack_nibbles(qweight, AWQ_ORDER).t().contiguous()
    zero = unpack_nibbles(qzeros, AWQ_ORDER).t().float().contiguous()
    return QuantizedWeight(codes, scales.t().float().contiguous(), zero, spec)


# ----------------------------------------------------------------------------------------------
# GPTQ layout


def _zero_offset(zero_format: str) -> int:
    if zero_format not in GPTQ_ZERO_FORMATS:
        raise PackError(f"unknown GPTQ zero_format {zero_format!r}; choose one of {', '.join(GPTQ_ZERO_FORMATS)}")
    return 1 if zero_format == "v1" else 0


def pack_gptq(qw: QuantizedWeight, zero_format: str = "v1") -> GPTQTensors:
    """``QuantizedWeight`` -> GPTQ ``(qweight [in/8, out], qzeros [in/g, out/8], scales [in/g, out], g_idx [in])``."""
    offset = _zero_offset(zero_format)
    g = _check_quantized(qw)
    in_features = qw.codes.shape[1]
    if in_features % PACK:
        raise PackError(f"in_features={in_features} must be a multiple of {PACK} to pack 8 rows per int32")
    if offset and bool((qw.zero < offset).any()):
        raise PackError("GPTQ v1 stores zero-1 in a nibble, so zero point 0 cannot be stored; "
                        "use zero_format='v2' or the AWQ layout")
    qweight = pack_nibbles(qw.codes).t().contiguous()  # [out, in/8] -> [in/8, out]
    qzeros = pack_nibbles(qw.zero.t() - offset)
    g_idx = torch.arange(in_features, dtype=torch.int32, device=qw.codes.device) // g
    return GPTQTensors(qweight, qzeros, _scales_fp16(qw.scale), g_idx)


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                zero_format: str = "v1") -> QuantizedWeight:
    """GPTQ tensors -> ``QuantizedWeight``. Only the trivial ``g_idx`` (no act-order permutation) is supported."""
    offset = _zero_offset(zero_format)
    in_features, out_features = qweight.shape[0] * PACK, qweight.shape[1]
    n_groups = scales.shape[0]
    if n_groups < 1 or in_features % n_groups:
        raise PackError(f"scales has {n_groups} groups, which does not divide in_features={in_features}")
    group_size = in_features // n_groups
    _expect("qweight", qweight, (in_features // PACK, out_features))
    _expect("qzeros", qzeros, (n_groups, out_features // PACK))
    _expect_float("scales", scales, (n_groups, out_features))
    _expect("g_idx", g_idx, (in_features,))
    trivial = torch.arange(in_features, dtype=torch.int32, device=g_idx.device) // group_size
    if not torch.equal(g_idx, trivial):
        raise PackError("g_idx is not arange(in) // group_size (act-order checkpoint); reordered groups are not supported")
    codes = unpack_nibbles(qweight.t().contiguous())  # [out, in/8] -> [out, in]
    zero = (unpack_nibbles(qzeros).to(torch.int32) + offset).t().float().contiguous()
    return QuantizedWeight(codes.contiguous(), scales.t().float().contiguous(), zero, _spec(group_size, "unpack_gptq"))
