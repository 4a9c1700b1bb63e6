"""The one group-wise integer quantizer used by every method and by the kernels' reference.

Weights are ``[..., out, in]``; groups run along the input dimension (the last one), so a
``[out, in]`` matrix with group size ``g`` gets ``scale``/``zero`` of shape ``[out, in // g]``.
Leading batch dimensions are allowed so that searches (AWQ's grid, clip ratios) can evaluate many
candidates in one tensor op.

Dequantization is always ``(q - zero) * scale``. ``compute_qparams`` gives an integer ``zero`` in
``[0, 2**bits - 1]``: asymmetric quantization chooses it per group, symmetric fixes it at
``2**(bits-1)``. An optimised fractional ``zero`` (HQQ) is allowed too: codes are then
``round(x / scale + zero)``; such weights cannot be packed into integer-zero layouts (kernels/pack.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

MIN_BITS, MAX_BITS = 2, 8
PER_CHANNEL = -1
_EPS = 1e-10


class QuantSpecError(ValueError):
    """A quantization setting that cannot work (bad bits, a group size that does not divide)."""


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 64
    symmetric: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise QuantSpecError(f"bits={self.bits!r} is not supported; choose an integer in {MIN_BITS}..{MAX_BITS}")
        if self.group_size != PER_CHANNEL and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise QuantSpecError(f"group_size={self.group_size!r} is invalid; use a positive divisor of the input features or -1 (per-channel)")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size == PER_CHANNEL else self.group_size

    def check(self, in_features: int, where: str = "") -> None:
        if self.group_size != PER_CHANNEL and in_features % self.group_size:
            raise QuantSpecError(
                f"group_size={self.group_size} does not divide in_features={in_features}{' of ' + where if where else ''}; "
                f"sizes that would: {', '.join(map(str, valid_group_sizes([in_features])))}"
            )


def valid_group_sizes(in_features_list, candidates=(8, 16, 32, 64, 96, 128, 192, 256)) -> list[int]:
    """Group sizes that divide every given input width (plus -1 = per-channel)."""
    sizes = [g for g in candidates if all(n % g == 0 for n in in_features_list)]
    return sizes + [PER_CHANNEL]


def _grouped(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    in_features = w.shape[-1]
    spec.check(in_features)
    g = spec.group_len(in_features)
    return w.reshape(*w.shape[:-1], in_features // g, g)


def group_absmax(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """max |w| of every group, ``[..., out, n_groups]``: the largest clip a group can use."""
    return _grouped(w.float(), spec).abs().amax(dim=-1)


class Bounds(NamedTuple):
    """Two-sided per-group limits ``lo ≤ 0 ≤ hi`` of the representable range (each broadcastable to
    ``[..., out, n_groups]``): a clip whose sides differ. A plain tensor ``c`` as a clip is ``[-c, c]``."""
    lo: torch.Tensor
    hi: torch.Tensor

    def map(self, fn) -> "Bounds":
        return Bounds(fn(self.lo), fn(self.hi))


Clip = torch.Tensor | Bounds


def group_minmax(w: torch.Tensor, spec: QuantSpec) -> Bounds:
    """min and max of every group, ``[..., out, n_groups]`` each: the widest bounds a group can use."""
    wg = _grouped(w.float(), spec)
    return Bounds(wg.amin(dim=-1), wg.amax(dim=-1))


def clip_ratio(clip: Clip, w: torch.Tensor, spec: QuantSpec) -> Clip:
    """A clip of ``w`` as shares of the group's own range (what ``clip_of`` turns back into a clip of
    weights that have changed since, as in GPTQ): ``c / max|w|``, or each side over that side's extreme."""
    if not isinstance(clip, Bounds):
        return clip / group_absmax(w, spec).clamp_min(1e-12)
    lo, hi = group_minmax(w, spec)
    return Bounds(torch.where(lo < 0, clip.lo / lo.clamp_max(-1e-12), 1.0),
                  torch.where(hi > 0, clip.hi / hi.clamp_min(1e-12), 1.0))


def clip_of(ratio: Clip | None, w: torch.Tensor, spec: QuantSpec) -> Clip | None:
    """The clip of ``w`` that keeps ``ratio`` (from ``clip_ratio``) of each group's range."""
    if ratio is None:
        return None
    if not isinstance(ratio, Bounds):
        return ratio * group_absmax(w, spec)
    lo, hi = group_minmax(w, spec)
    return Bounds(ratio.lo * lo, ratio.hi * hi)


def compute_qparams(w: torch.Tensor, spec: QuantSpec, clip: Clip | None = None):
    """Per-group ``(scale, zero)`` for ``w``.

    ``clip`` bounds the representable range: a tensor ``c`` (broadcastable to ``[..., out, n_groups]``)
    to ``[-c, c]``, ``Bounds(lo, hi)`` to ``[lo, hi]``; AWQ's clip search and GPTQ's optional grid use it.
    The range always contains 0, so ``zero`` is an exact integer in ``[0, maxq]``.
    """
    wg = _grouped(w.float(), spec)
    return range_qparams(Bounds(wg.amin(dim=-1), wg.amax(dim=-1)), spec, clip)


def range_qparams(minmax: Bounds, spec: QuantSpec, clip: Clip | None = None):
    """``compute_qparams`` from the groups' min and max (``group_minmax``), for searches that try many
    clips on the same weights."""
    wmin, wmax = minmax
    if clip is not None:
        lo, hi = clip if isinstance(clip, Bounds) else (-clip, clip)
        wmax = torch.minimum(wmax, hi)
        wmin = torch.maximum(wmin, lo)
    if spec.symmetric:
        half = 2 ** (spec.bits - 1)
        absmax = torch.maximum(wmax.abs(), wmin.abs())
        scale = (absmax / (half - 1)).clamp_min(_EPS)
        zero = torch.full_like(scale, float(half))
    else:
        wmax = wmax.clamp_min(0)
        wmin = wmin.clamp_max(0)
        scale = ((wmax - wmin) / spec.maxq).clamp_min(_EPS)
        zero = torch.round(-wmin / scale).clamp(0, spec.maxq)
    return scale, zero


def codes_for(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec,
              fractional: bool = False, inplace: bool = False) -> torch.Tensor:
    """Elementwise rounding with broadcast ``scale``/``zero`` (float codes in ``[0, maxq]``).
    The single rounding rule: group-wise quantize, fake_quantize and GPTQ's column loop all use it.
    ``fractional``: ``zero`` may be fractional, so the shifted value is rounded (for integer zeros
    both forms give the same codes; the default keeps GPTQ's per-column hot path free of checks).
    ``inplace``: overwrite the float tensor ``x`` with its codes instead of allocating (AWQ's
    searches run this on hundreds of MB at a time; fresh buffers cost page faults)."""
    q = x.div_(scale) if inplace else x / scale
    if fractional:
        return q.add_(zero).round_().clamp_(0, spec.maxq)
    return q.round_().add_(zero).clamp_(0, spec.maxq)


def rounding_error(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec,
                   out: torch.Tensor) -> torch.Tensor:
    """``fake_quantize(w) - w`` for the given broadcast ``scale`` and ``zero``, written into ``out``
    (w's shape, fp32): for searches that score many ranges of the same weights."""
    return codes_for(out.copy_(w), scale, zero, spec, inplace=True).sub_(zero).mul_(scale).sub_(w)


def integral(zero: torch.Tensor) -> bool:
    """Whether every zero point is a whole number (what integer-zero checkpoint layouts can hold)."""
    return bool(torch.equal(zero, zero.round()))


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes in ``[0, maxq]`` (uint8), same shape as ``w``."""
    q = codes_for(_grouped(w.float(), spec), scale.unsqueeze(-1), zero.unsqueeze(-1), spec, not integral(zero))
    return q.to(torch.uint8).reshape(w.shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    qg = _grouped(q.float(), spec)
    return ((qg - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(q.shape)


def fake_quantize(w: torch.Tensor, spec: QuantSpec, clip: Clip | None = None,
                  inplace: bool = False) -> torch.Tensor:
    """quantize→dequantize in one pass, returned in ``w``'s dtype; ``inplace`` overwrites ``w``
    (contiguous fp32) with the result instead."""
    if inplace and (w.dtype != torch.float32 or not w.is_contiguous()):
        raise ValueError("fake_quantize(inplace=True) needs a contiguous float32 tensor")
    scale, zero = compute_qparams(w, spec, clip)
    s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
    q = codes_for(_grouped(w.float(), spec), s, z, spec, inplace=inplace)
    return q.sub_(z).mul_(s).reshape(w.shape).to(w.dtype)


@dataclass
class QuantizedWeight:
    """Integer codes plus per-group parameters: what kernels pack and checkpoints store."""

    codes: torch.Tensor  # uint8 [out, in]
    scale: torch.Tensor  # float [out, n_groups]
    zero: torch.Tensor  # float holding integers [out, n_groups]
    spec: QuantSpec

    @classmethod
    def from_weight(cls, w: torch.Tensor, spec: QuantSpec, clip: Clip | None = None) -> "QuantizedWeight":
        scale, zero = compute_qparams(w, spec, clip)
        return cls(quantize(w, scale, zero, spec), scale, zero, spec)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.spec)

    def rows(self, start: int, stop: int) -> "QuantizedWeight":
        """The output rows ``start:stop`` (a Linear's share of a stacked weight)."""
        return QuantizedWeight(self.codes[start:stop].clone(), self.scale[start:stop].clone(),
                               self.zero[start:stop].clone(), self.spec)
