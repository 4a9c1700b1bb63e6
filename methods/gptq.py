"""GPTQ (Frantar et al., ICLR 2023), in-house: quantize one column at a time and push each column's
rounding error onto the not-yet-quantized columns through the inverse Hessian ``H = 2/n·XᵀX``.

Lazy block updates (``block_size`` columns at a time), dampening (``damp_percent`` of the mean
diagonal) and a column order (``act_order``):
- ``off``: the original order; each group's parameters come from its error-updated weights;
- ``static``: columns by decreasing Hessian diagonal, group parameters fixed up front from the
  original weights ("static groups");
- ``group``: group-aware reordering: whole groups by decreasing summed diagonal, columns within a
  group likewise, so a group's columns stay together and its parameters come from its updated weights.
Every order keeps groups contiguous in the original column order: the result packs into the AWQ
layout without a g_idx. An optional per-(row, group) ``clip_ratio`` narrows each group's range:
with ``clip`` (the default) AWQ's clip search sets it on the layer's Hessian before the columns are
walked (methods/awq.py ``search_clip``), as in ``awq_gptq`` after its scaling.
Layers are processed sequentially, each fed by its already-quantized predecessors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from methods import onload
from methods.awq import ClipSearchConfig, check_search, clip_ratios, damped
from methods.capture import input_set_stages, layer_linears
from methods.layerwise import quantize_layerwise
from methods.quantizer import (PER_CHANNEL, Bounds, Clip, QuantizedWeight, QuantSpec, clip_of, codes_for,
                               compute_qparams)
from methods.registry import Method, QuantResult, choice, register


ORDERS = ("static", "off", "group")  # act_order's values, the default first


@dataclass
class GPTQConfig(ClipSearchConfig):
    name: str = "gptq"
    # each (row, group)'s range from AWQ's clip search on the layer's Hessian before GPTQ starts
    # (``clip``): it closed more of RTN's gap than GPTQ's min/max ranges at w4 and w3 (README); a
    # refining pass closed less
    clip_refine: int = 0
    # With 32 x 256-token calibration windows, the paper's damp 0.01 without act_order overfit the
    # calibration text: worse than RTN on held-out German/Spanish/Portuguese/Russian (README, #4).
    damp_percent: float = 0.1
    block_size: int = 128
    act_order: str = choice(*ORDERS)  # column order (module docstring)
    # within each layer, collect an input set's statistics only after the sets before it are quantized
    # (q/k/v, then o_proj, gate/up, down_proj), instead of all from the layer's full-precision pass.
    # Off: level with one pass for gptq and awq_gptq on the embedded model, over calibration seeds (README).
    true_sequential: bool = False
    batch_size: int = 8


def _block_size(requested: int, group: int) -> int:
    """A block size whose boundaries line up with group boundaries, so that a group's parameters
    are always computed from fully updated columns."""
    if group <= requested:
        return requested // group * group
    return requested if group % requested == 0 else group


def _sub_block(block: int, group: int, widest: int = 32) -> int:
    """Columns whose rank-1 updates stay inside their sub-block; one product then applies them to the
    rest of the block (two-level lazy updates: fewer, larger tensor ops). The sub-block divides the
    group or the group divides it, so a group's parameters still come from fully updated columns."""
    sub = math.gcd(widest, group)
    return sub if sub >= 8 and block % sub == 0 else block


def column_order(diag: torch.Tensor, mode: str, group: int) -> torch.Tensor:
    """The permutation of input columns GPTQ walks in (see the module docstring for the modes)."""
    if mode == "off":
        return torch.arange(len(diag), device=diag.device)
    if mode == "static":
        return torch.argsort(diag, descending=True)
    if mode == "group":
        by_group = diag.view(-1, group)
        groups = torch.argsort(by_group.sum(dim=1), descending=True)
        within = torch.argsort(by_group, dim=1, descending=True)
        starts = torch.arange(0, len(diag), group, device=diag.device).unsqueeze(1)
        return (starts + within)[groups].reshape(-1)
    raise ValueError(f"act_order={mode!r}; choose one of: {', '.join(ORDERS)}")


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, block_size: int = 128,
                  damp_percent: float = 0.01, act_order: str | bool = "off",
                  clip_ratio: Clip | None = None) -> tuple[QuantizedWeight, float]:
    """Quantize ``weight`` [out, in] given ``hessian`` [in, in]. ``act_order``: one of ``ORDERS``
    (``True``/``False`` mean static/off). ``clip_ratio`` [out, n_groups] in (0, 1] (or ``Bounds`` of
    them, from ``quantizer.clip_ratio``): each group's range is that share of its max |w| (of its min
    and its max). Returns the quantized weight and the summed ``(w - q)² / d``
    objective (GPTQ's proxy loss)."""
    mode = {True: "static", False: "off"}.get(act_order, act_order)
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    out_f, in_f = W.shape
    g = spec.group_len(in_f)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    static = mode == "static"
    if static:  # [out, n_groups], from the original weights
        scale_all, zero_all = compute_qparams(W, spec, clip_of(clip_ratio, W, spec))
    perm = column_order(torch.diag(H), mode, g)
    W, H = W[:, perm], H[perm][:, perm]

    H = damped(H, damp_percent)
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:  # badly conditioned: dampen harder rather than fail
        H = damped(H, 0.1)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    # The loop walks input columns: it works on the transpose, so that each column is one contiguous
    # row (strided column access made every per-column op touch one cache line per output row).
    WT = W.t().contiguous()  # [in, out]
    codes = torch.zeros_like(WT)
    n_groups = in_f // g
    scale = torch.zeros(n_groups, out_f, device=W.device)
    zero = torch.zeros(n_groups, out_f, device=W.device)
    if static:
        scale_rows, zero_rows = scale_all.t().contiguous(), zero_all.t().contiguous()
    loss = torch.zeros(out_f, device=W.device)
    group_of = (perm // g).tolist()  # python ints: no device sync per column
    per_row = QuantSpec(spec.bits, PER_CHANNEL, spec.symmetric)
    B = _block_size(block_size, g)
    sub = _sub_block(B, g)
    for i1 in range(0, in_f, B):
        i2 = min(i1 + B, in_f)
        W1 = WT[i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i, d in enumerate(Hinv1.diagonal().tolist()):
            col = i1 + i
            j2 = min((i // sub + 1) * sub, i2 - i1)  # end of the sub-block holding column i
            grp = group_of[col]
            if static:
                s, z = scale_rows[grp], zero_rows[grp]
            else:
                if col % g == 0:  # start of a group: parameters from the updated weights
                    seg = torch.cat([W1[i:], WT[i2:]])[:g].t()
                    ratio = None if clip_ratio is None else _columns(clip_ratio, grp, grp + 1)
                    sg, zg = compute_qparams(seg, per_row, clip_of(ratio, seg, per_row))
                    scale[grp], zero[grp] = sg[:, 0], zg[:, 0]
                s, z = scale[grp], zero[grp]
            w = W1[i]
            q = codes_for(w, s, z, spec)
            codes[col] = q
            err = (w - (q - z) * s) / d
            W1[i + 1:j2].addr_(Hinv1[i, i + 1:j2], err, alpha=-1)
            Err1[i] = err
            if i + 1 == j2 and j2 < i2 - i1:  # the sub-block's errors reach the rest of the block at once
                j1 = j2 - sub
                W1[j2:].addmm_(Hinv1[j1:j2, j2:].t(), Err1[j1:j2], alpha=-1)
        loss += Err1.pow(2).sum(dim=0) / 2  # (w - q)² / d² / 2 per column
        WT[i2:] -= Hinv[i1:i2, i2:].t() @ Err1

    codes = codes[torch.argsort(perm)].t()
    scale, zero = (scale_all, zero_all) if static else (scale.t().contiguous(), zero.t().contiguous())
    return QuantizedWeight(codes.to(torch.uint8), scale, zero, spec), float(loss.sum())


def _input_sets(linears: dict, stats: dict) -> list[list[str]]:
    """Group Linear names by the input statistics object they share (q/k/v, gate/up), in layer order."""
    groups: dict[int, list[str]] = {}
    for name in linears:
        groups.setdefault(id(stats[name]), []).append(name)
    return list(groups.values())


def _columns(ratio: Clip, start: int, stop: int) -> Clip:
    cut = lambda t: t[:, start:stop]  # noqa: E731
    return ratio.map(cut) if isinstance(ratio, Bounds) else cut(ratio)


def _stacked_ratios(ratios: list, linears: list, spec: QuantSpec) -> Clip:
    """One clip ratio for stacked Linears; a Linear without one keeps its whole range (ratio 1)."""
    two_sided = any(isinstance(r, Bounds) for r in ratios)
    parts = []
    for r, lin in zip(ratios, linears):
        if r is None:
            groups = lin.in_features // spec.group_len(lin.in_features)
            r = torch.ones(lin.out_features, groups, device=lin.weight.device)
            r = Bounds(r, r) if two_sided else r
        elif isinstance(r, Bounds) != two_sided:
            raise ValueError("stacked Linears mix one- and two-sided clip ratios")
        parts.append(r)
    if two_sided:
        return Bounds(torch.cat([p.lo for p in parts]), torch.cat([p.hi for p in parts]))
    return torch.cat(parts)


@torch.no_grad()
def gptq_layer(linears: dict, stats: dict, spec: QuantSpec, cfg, clip_ratios: dict | None = None):
    """GPTQ on every Linear of one decoder layer, in place. Linears reading the same input share one
    Hessian and GPTQ treats rows independently, so one call on their stacked rows equals separate
    calls and the column loop runs once. Returns ({name: QuantizedWeight}, per-input-set stats); the
    caller keeps the codes only where ``onload.keeps_codes``."""
    qweights, out = {}, []
    for names in _input_sets(linears, stats):
        st = stats[names[0]]
        hessian = st.gram * (2.0 / max(st.tokens, 1))
        stacked = torch.cat([linears[n].weight for n in names])
        ratio = None
        if clip_ratios and any(n in clip_ratios for n in names):
            ratio = _stacked_ratios([clip_ratios.get(n) for n in names], [linears[n] for n in names], spec)
        qw, loss = gptq_quantize(stacked, hessian, spec, cfg.block_size, cfg.damp_percent, cfg.act_order, ratio)
        rows = 0
        for n in names:
            lin = linears[n]
            part = qw.rows(rows, rows + lin.out_features)
            rows += lin.out_features
            lin.weight.data.copy_(part.dequantize().to(lin.weight.dtype))
            qweights[n] = part
        out.append({"layer": "+".join(names), "gptq_loss": loss})
    return qweights, out


def layer_stages(linears: dict, mapping, cfg) -> list[dict]:
    """The groups of a layer's Linears quantized one after another: every input set in turn with
    ``true_sequential``, else all at once from one pass."""
    return input_set_stages(linears, mapping) if cfg.true_sequential else [linears]


@register("gptq", GPTQConfig)
class GPTQ(Method):
    def check_config(self, cfg) -> None:
        check_search(cfg)

    @torch.no_grad()
    def quantize(self, model, calib, cfg) -> QuantResult:
        return quantize_layerwise(self.name, model, calib, cfg, self._layer)

    def _layer(self, runner, i, mapping, spec, cfg, skipped, stats_out, qweights) -> set[str]:
        """GPTQ on decoder layer ``i``, input set by input set with ``true_sequential``; then the next
        layer is fed this layer's quantized outputs."""
        linears = layer_linears(runner.layers[i])
        prefix = f"{mapping.layers}.{i}."
        for stage in layer_stages(linears, mapping, cfg):
            stats = runner.collect_stats(i, stage, mapping)
            ratios = clip_ratios(stage, stats, mapping, spec, cfg) if cfg.clip else {}
            layer_q, layer_stats = gptq_layer(stage, stats, spec, cfg, ratios)
            qweights.update({prefix + n: qw for n, qw in layer_q.items() if onload.keeps_codes(stage[n])})
            stats_out.extend({**st, "layer": prefix + st["layer"]} for st in layer_stats)
        runner.advance(i)
        return {prefix + n for n in linears}
