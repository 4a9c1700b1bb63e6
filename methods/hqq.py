"""Half-quadratic quantization (HQQ; Badri & Shaji, 2023): calibration-free. Each group keeps its
min-max scale, and its zero point is optimised so that the dequantized weights match the original
under a sparsity-promoting ``lp`` error (p < 1), which tolerates a few large misses in exchange for
many small ones. Half-quadratic splitting alternates three closed-form steps:

    codes  = round(W / s + z), clamped to the grid
    W_e    = shrink_p(W - (codes - z)·s, β)      (the error's outlier part, generalised soft threshold)
    z      = mean over the group of (codes - (W - W_e) / s)
    β     *= κ

Each group keeps the zero point with the smallest mean |W - Ŵ| seen. The optimised zero points are
fractional: the one quantizer rounds ``W / s + z`` then (methods/quantizer.py), and integer-zero
checkpoint layouts cannot hold them unless ``round_zero`` rounds them at the end.

Measured on the embedded model (README): lower weight MSE than RTN, yet no better perplexity at
w4 and far worse at w3. A fractional zero point makes 0 unrepresentable, so the near-zero bulk of
a group shares one offset; in v/o_proj and down_proj, whose outputs join the residual stream, the
inputs' nonzero means turn that offset into an output bias.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from methods import onload
from methods.quantizer import QuantizedWeight, QuantSpec, codes_for, dequantize, quantize
from methods.registry import Method, MethodConfig, MethodError, QuantResult, register
from methods.targets import peak_rss_mb, prepare_targets


@dataclass
class HQQConfig(MethodConfig):
    name: str = "hqq"
    iters: int = 20
    lp_norm: float = 0.7  # p of the error norm the zero points minimise
    beta: float = 10.0  # initial penalty of the splitting; grows by kappa each iteration
    kappa: float = 1.01
    round_zero: bool = False  # integer zero points at the end: exportable as AWQ-GEMM, a little less accurate


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The proximal step of β/2‖x - y‖² + ‖y‖_p^p: soft thresholding generalised to p < 1."""
    mag = x.abs()
    return torch.sign(x) * torch.relu(mag - mag.clamp_min(1e-12).pow(p - 1) / beta)


@torch.no_grad()
def hqq_qparams(w: torch.Tensor, spec: QuantSpec, iters: int = 20, p: float = 0.7, beta: float = 10.0,
                kappa: float = 1.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group ``(scale, zero)`` for ``w`` [out, in]: min-max scale, HQQ-optimised fractional zero."""
    g = spec.group_len(w.shape[-1])
    W = w.float().reshape(*w.shape[:-1], -1, g)
    lo, hi = W.amin(dim=-1, keepdim=True), W.amax(dim=-1, keepdim=True)
    s = ((hi - lo) / spec.maxq).clamp_min(1e-10)
    z = -lo / s
    best_z, best_err = z.clone(), torch.full_like(z, float("inf"))
    for _ in range(iters):
        q = codes_for(W, s, z, spec, fractional=True)
        err = W - (q - z) * s
        mean_err = err.abs().mean(dim=-1, keepdim=True)
        better = mean_err < best_err
        best_z, best_err = torch.where(better, z, best_z), torch.where(better, mean_err, best_err)
        W_e = shrink_lp(err, beta, p)
        z = (q - (W - W_e) / s).mean(dim=-1, keepdim=True)
        beta *= kappa
    q = codes_for(W, s, z, spec, fractional=True)  # the last update is a candidate too
    mean_err = (W - (q - z) * s).abs().mean(dim=-1, keepdim=True)
    best_z = torch.where(mean_err < best_err, z, best_z)
    return s.squeeze(-1), best_z.squeeze(-1)


@register("hqq", HQQConfig, calibrated=False)
class HQQ(Method):
    def check_config(self, cfg) -> None:
        if cfg.symmetric:
            raise MethodError("method=hqq optimises asymmetric zero points; drop method.symmetric=true")

    def export_problem(self, cfg) -> str | None:
        if not cfg.round_zero:
            return ("hqq's optimised zero points are fractional and AWQ-GEMM/GPTQ checkpoints store integer "
                    "zeros; add method.round_zero=true to export")
        return None

    @torch.no_grad()
    def quantize(self, model, calib, cfg) -> QuantResult:
        t0 = time.perf_counter()
        self.check_config(cfg)
        spec, linears = prepare_targets(model, cfg)
        stats, qweights = [], {}
        for name, lin in onload.walk(tqdm(linears.items(), desc="hqq: quantizing", unit="linear")):
            w = lin.weight.data
            scale, zero = hqq_qparams(w, spec, cfg.iters, cfg.lp_norm, cfg.beta, cfg.kappa)
            if cfg.round_zero:
                zero = zero.round().clamp(0, spec.maxq)
            qw = QuantizedWeight(quantize(w, scale, zero, spec), scale, zero, spec)
            wq = dequantize(qw.codes, scale, zero, spec)
            stats.append({"layer": name, "weight_mse": (wq - w.float()).pow(2).mean().item()})
            lin.weight.data.copy_(wq.to(w.dtype))
            if onload.keeps_codes(lin):
                qweights[name] = qw
        return QuantResult(self.name, time.perf_counter() - t0, peak_rss_mb(), stats, qweights)
