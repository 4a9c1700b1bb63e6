"""Salient weight channels (AWQ paper, Table 1): keep a few input channels of every Linear in full
precision, round the rest to nearest, and ask which channels were worth keeping.

A channel is chosen by the mean |x| of its calibration activations (``activation``), by the L2 norm
of its weight column (``weight``) or by a seeded draw (``random``). Quantization parameters are
computed on the whole weight as plain RTN does; the kept columns are then put back in full
precision, so the only difference between choices is which columns escape rounding.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from methods import onload
from methods.awq import proxy_loss
from methods.capture import InputStats, LayerwiseRunner, layer_linears
from methods.mappings import mapping_for
from methods.quantizer import PER_CHANNEL, QuantSpec, fake_quantize
from methods.registry import Method, MethodConfig, MethodError, QuantResult, register
from methods.targets import peak_rss_mb, spec_from, target_linears

SELECTORS = ("activation", "weight", "random")
NO_SELECTOR = "none"  # keep no channel: plain RTN, the study's baseline
ERROR_SUITE, ERROR_METRIC = "salience", "out_rel_mse"  # the row this method measures itself
TOY_WEIGHTS = (0.20, 1.20)
TOY_ACTIVATIONS = (20.0, 0.5)


class SalienceError(MethodError):
    """A selector or fraction the study cannot use."""


def check_choice(selector: str, fraction: float) -> None:
    if selector not in SELECTORS:
        raise SalienceError(f"unknown channel selector {selector!r}; choose from: {', '.join(SELECTORS)}")
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise SalienceError(f"keep fraction {fraction!r} is out of range; use a number in (0, 1), e.g. 0.01 for 1%")


def kept_count(in_features: int, fraction: float) -> int:
    """How many input channels a fraction keeps: at least one, so that 0.1% of a narrow layer is not none."""
    return max(1, min(in_features, round(fraction * in_features)))


def channel_scores(selector: str, weight: torch.Tensor, act_mean_abs: torch.Tensor | None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One score per input channel of ``weight`` [out, in]; the highest scores are kept."""
    if selector == "activation":
        if act_mean_abs is None:
            raise SalienceError("the activation selector needs calibration statistics")
        return act_mean_abs.float()
    if selector == "weight":
        return weight.float().norm(dim=0)
    if selector == "random":
        return torch.rand(weight.shape[1], generator=generator)
    raise SalienceError(f"unknown channel selector {selector!r}; choose from: {', '.join(SELECTORS)}")


def select_channels(selector: str, fraction: float, weight: torch.Tensor, act_mean_abs: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted indices of the input channels to keep in full precision."""
    check_choice(selector, fraction)
    scores = channel_scores(selector, weight, act_mean_abs, generator)
    return torch.topk(scores, kept_count(weight.shape[1], fraction)).indices.sort().values


@torch.no_grad()
def quantize_keeping(weight: torch.Tensor, spec: QuantSpec, keep: torch.Tensor | None) -> torch.Tensor:
    """RTN of ``weight`` with the columns ``keep`` restored to their full-precision values."""
    wq = fake_quantize(weight, spec)
    if keep is not None and keep.numel():
        wq[:, keep] = weight[:, keep]
    return wq


def output_energy(weight: torch.Tensor, stats: InputStats) -> float:
    """‖XWᵀ‖² over the calibration inputs X."""
    return float(proxy_loss(weight.float(), stats.gram))


def relative_output_error(weight: torch.Tensor, wq: torch.Tensor, stats: InputStats, energy: float | None = None) -> float:
    """‖X(W−Ŵ)ᵀ‖² / ‖XWᵀ‖² over the calibration inputs X, from their Gram matrix."""
    energy = output_energy(weight, stats) if energy is None else energy
    return float(proxy_loss(wq.float() - weight.float(), stats.gram)) / max(energy, 1e-30)


@torch.no_grad()
def collect_input_stats(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> dict[str, InputStats]:
    """Mean |x| per channel and Gram matrix of every decoder Linear's input, from the FP model.
    Linears that read the same tensor share one InputStats."""
    mapping = mapping_for(model)
    runner = LayerwiseRunner(model, mapping, input_ids, batch_size)
    out: dict[str, InputStats] = {}
    for i, layer in enumerate(runner.layers):
        stats = runner.collect_stats(i, layer_linears(layer), mapping, also_advance=True)
        out.update({f"{mapping.layers}.{i}.{n}": st for n, st in stats.items()})
    return out


@torch.no_grad()
def protect_salient(linears: dict[str, nn.Linear], stats: dict[str, InputStats], spec: QuantSpec,
                    selector: str | None, fraction: float = 0.0, seed: int = 0,
                    energy: dict[str, float] | None = None) -> list[dict]:
    """Quantize every Linear in place keeping its chosen channels in full precision (``selector``
    None keeps none: plain RTN). Returns per-layer stats: kept channels and relative output error
    on the calibration inputs. ``energy`` caches each Linear's ‖XWᵀ‖² across calls on the same
    original weights (it is as costly as the error itself)."""
    if selector is not None:
        check_choice(selector, fraction)
    missing = [n for n in linears if n not in stats]
    if missing:
        raise SalienceError(f"no calibration statistics for {missing[0]} (only decoder-layer Linears are covered)")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, lin in onload.walk(linears.items()):
        w = lin.weight.data
        keep = None if selector is None else select_channels(selector, fraction, w, stats[name].mean_abs, gen)
        wq = quantize_keeping(w, spec, keep)
        if energy is not None and name not in energy:
            energy[name] = output_energy(w, stats[name])
        out.append({"layer": name, "kept": 0 if keep is None else keep.numel(),
                    "rel_err": relative_output_error(w, wq, stats[name], None if energy is None else energy[name])})
        lin.weight.data.copy_(wq.to(w.dtype))
    return out


def toy_two_channel(bits: int, symmetric: bool = False) -> list[dict]:
    """The paper's two-channel picture: w = (0.20, 1.20), x = (20, 0.5). The small weight carries
    4.0 of the output, the large one 0.6. Quantize the row (one group) keeping no channel, the
    activation-salient channel 0, or the weight-salient channel 1, and measure the output error."""
    spec = QuantSpec(bits, PER_CHANNEL, symmetric)
    w = torch.tensor([TOY_WEIGHTS], dtype=torch.float64)
    x = torch.tensor(TOY_ACTIVATIONS, dtype=torch.float64)
    y = float(w[0] @ x)
    rows = []
    for label, keep in (("none", None), ("channel 0 (largest activation)", [0]), ("channel 1 (largest weight)", [1])):
        wq = quantize_keeping(w, spec, None if keep is None else torch.tensor(keep))[0]
        yq = float(wq @ x)
        rows.append({"kept": label, "w_q": tuple(round(float(v), 4) for v in wq), "y": y, "y_q": yq,
                     "abs_err": abs(yq - y)})
    return rows


def toy_contributions() -> tuple[float, ...]:
    return tuple(math.prod(p) for p in zip(TOY_WEIGHTS, TOY_ACTIVATIONS))


@dataclass
class SalienceConfig(MethodConfig):
    """Keep ``fraction`` of every decoder Linear's input channels in full precision, chosen by
    ``selector``; round the rest to nearest. ``selector=none`` keeps none (RTN)."""
    name: str = "salience"
    selector: str = "activation"
    fraction: float = 0.01
    seed: int = 0  # the random selector's draw
    batch_size: int = 8  # calibration windows per forward pass


@register("salience", SalienceConfig)
class KeepSalient(Method):
    """The salience study's variants as a method; it reports its own output-error row."""

    def quantize(self, model, calib, cfg) -> QuantResult:
        if cfg.quantize_lm_head:
            raise SalienceError("salience covers the decoder Linears only; drop method.quantize_lm_head=true")
        selector = None if cfg.selector == NO_SELECTOR else cfg.selector
        if selector is not None:
            check_choice(selector, cfg.fraction)
        t0 = time.perf_counter()
        stats = collect_input_stats(model, calib.input_ids, cfg.batch_size)
        layers = protect_salient(target_linears(model), stats, spec_from(cfg), selector, cfg.fraction, seed=cfg.seed)
        return QuantResult(self.name, time.perf_counter() - t0, peak_rss_mb(), layers, rows=[error_row(layers, calib)])


def error_row(layers: list[dict], calib) -> dict:
    """Mean relative output error over the Linears, with its standard error."""
    errs = [x["rel_err"] for x in layers]
    mean = sum(errs) / len(errs)
    se = math.sqrt(sum((e - mean) ** 2 for e in errs) / (len(errs) - 1) / len(errs)) if len(errs) > 1 else math.nan
    return {"suite": ERROR_SUITE, "task": f"calib:{calib.name}", "metric": ERROR_METRIC, "value": mean, "stderr": se,
            "n": len(errs), "kept_channels": sum(x["kept"] for x in layers)}
