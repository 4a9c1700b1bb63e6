"""Activation-aware weight quantization (Lin et al., MLSys 2024), in-house.

Per decoder layer, from the calibration activations entering each Linear:
1. scale search: for every scale group (a norm or Linear feeding some Linears) try
   ``s = mean|x|^α`` (optionally ``/ mean|w|^(1-α)``, "duo") for α in ``[0, 1)`` and keep the α that
   minimises the group's output error after fake quantization; fold ``1/s`` into the preceding op
   and ``s`` into the Linears (exact in full precision);
2. clip search: per Linear (q/k too unless ``clip_qk=false``) and per (output row, input group),
   shrink the quantization range, its max and its min separately (``clip_range=asymmetric``) or
   both to ``±r·max|w|`` (``symmetric``), for r in ``[1 - max_shrink, 1]``, and keep the best;
3. quantize with the one group-wise quantizer.

The scale search scores a candidate by ``method.loss``: ``linear``, the linear proxy
``‖X Eᵀ‖² = tr(E G Eᵀ)`` summed over the group's Linears with ``G = XᵀX`` accumulated once per input
set (a grid point costs O(out·in²), never touches the tokens again, candidates batched); or
``block``, the squared error of the output of the block the group feeds (attention or MLP,
nonlinearities included; methods/block_loss.py) on ``block_samples`` calibration windows. For a
group whose only consumers are its Linears (v→o, up→down) both are the same quantity and the
proxy is used. The clip search always uses the proxy, group by group, then (``clip_refine``) with
each group's cross terms to the rest of its row. Both searches evaluate the proxy as ``‖E L‖²``
with ``L Lᵀ = G`` (``gram_factor``), in bf16 when the calibration runs in bf16. Inputs to later
layers come from the full-precision (scaled) model, the layer's FP outputs since scaling is exact;
with ``sequential`` from the quantized layers instead, so that each layer's search sees the error
upstream.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from methods.block_loss import BlockLoss, record_inputs, rows_per_batch
from methods.capture import InputStats, LayerwiseRunner, current_forward_dtype, layer_linears
from methods.layerwise import quantize_layerwise
from methods.mappings import ArchMapping, ScaleGroup
from methods.quantizer import (PER_CHANNEL, Bounds, Clip, QuantSpec, clip_ratio, fake_quantize, group_absmax,
                               group_minmax, range_qparams, rounding_error)
from methods.registry import Method, MethodConfig, MethodError, QuantResult, choice, register
from methods.targets import fake_quantize_linears


@dataclass
class ClipSearchConfig(MethodConfig):
    """The clip search's settings (``search_clip``), for every method that runs it (AWQ, GPTQ)."""
    n_grid: int = 20  # ratio grid for the clip search (and AWQ's α grid for the scale search)
    clip: bool = True  # search each (row, group)'s range (GPTQ keeps it as a share of the group's range)
    max_shrink: float = 0.5  # clip ratios tried: 1, 1 - 1/n_grid, ..., 1 - max_shrink
    # asymmetric: each group's max and min shrunk separately (every pair of ratios); symmetric: one
    # bound ±c, the reference AWQ's clip. Asymmetric closed more of RTN's gap at w4 and w3 (README).
    clip_range: str = choice("asymmetric", "symmetric")
    # clip q/k_proj too; the reference AWQ leaves them alone (their errors pass through the softmax),
    # but with the range searched on their own output error it closed more of the gap (README)
    clip_qk: bool = True
    # clip passes that rescore each group with its error's cross terms to the other groups (the full
    # Gram matrix, not only its diagonal blocks; search_clip); one closed more of RTN's gap (README)
    clip_refine: int = 1
    # share of the Gram matrix's mean diagonal added to its diagonal before the searches score
    # candidates (as GPTQ's damp_percent does to its Hessian): less weight on the calibration inputs'
    # correlations, which need not hold on other text
    search_damp: float = 0.0


@dataclass
class AWQConfig(ClipSearchConfig):
    name: str = "awq"
    duo_scaling: bool = True  # s = s_x^α / s_w^(1-α); on: it closed more of RTN's gap at w4 and w3 (README)
    scale: bool = True
    loss: str = choice("linear", "block")  # what the scale search minimises (module docstring)
    block_samples: int = 8  # calibration windows the block loss runs on (spread over all batches)
    # each layer searched on the outputs of the already-quantized layers before it (GPTQ's order)
    # instead of the full-precision ones
    sequential: bool = False
    batch_size: int = 8  # calibration windows per forward pass


_CHUNK_ELEMENTS = 1 << 26  # bound the batched candidate tensors (~256 MB in fp32)


def proxy_loss(E: torch.Tensor, gram: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over rows of e G eᵀ for E [..., out, in]: the output MSE (times tokens) of a weight error.
    ``out`` (E's shape and dtype): scratch space for E @ G, reused across calls."""
    EG = torch.matmul(E, gram) if out is None else torch.matmul(E, gram, out=out)
    return EG.mul_(E).sum(dim=(-1, -2))


def damped(gram: torch.Tensor, damp: float) -> torch.Tensor:
    """``G + damp·mean(diag G)·I`` (a new tensor; ``G`` itself when ``damp`` is 0)."""
    if not damp:
        return gram
    return gram + damp * gram.diagonal().mean() * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)


def gram_factor(gram: torch.Tensor) -> torch.Tensor:
    """L with L Lᵀ = G ([..., in, in], batched too), so that the proxy is ``‖E L‖²``, a sum of squares.
    Unlike ``E G Eᵀ`` it keeps its relative precision when E and L are rounded to bf16: calibration
    inputs share a large mean, G ≈ n·μμᵀ + C, and rounding G entry by entry moves e G eᵀ by up to
    about in·2⁻⁹ of Σ|e||G||e|, more than the loss outside the mean's direction."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    ridge = 1e-6 * gram.diagonal(dim1=-2, dim2=-1).mean().clamp_min(1e-30)  # dead inputs: G singular
    L, info = torch.linalg.cholesky_ex(gram + ridge * eye)
    if bool((info != 0).any()):  # not numerically positive definite: the symmetric square root
        lam, Q = torch.linalg.eigh(gram)
        L = Q * lam.clamp_min(0).sqrt().unsqueeze(-2)
    return L


def factor_loss(E: torch.Tensor, factor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``proxy_loss`` through ``gram_factor``: Σ over rows of ‖e L‖², summed in fp32 whatever E's dtype.
    ``out`` (E's shape and dtype): scratch space for E @ L."""
    EL = torch.matmul(E, factor) if out is None else torch.matmul(E, factor, out=out)
    return torch.linalg.vecdot(EL, EL).sum(dim=-1, dtype=torch.float32)


def ranking_dtype() -> torch.dtype:
    """The dtype of the searches' error products (``E L``): bf16 when the calibration passes run in
    bf16 (the session picked it because its matmuls are several times faster here), else fp32. The
    products only rank candidates, and their squares are summed in fp32; the weights are still
    quantized in fp32."""
    return torch.bfloat16 if current_forward_dtype() == torch.bfloat16 else torch.float32


def candidate_scales(x_mean: torch.Tensor, n_grid: int, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """[n_grid, in] scales for α = 0, 1/n, ..., (n-1)/n, normalised so that max·min = 1."""
    alphas = torch.arange(n_grid, dtype=torch.float32, device=x_mean.device).unsqueeze(1) / n_grid
    x = x_mean.clamp_min(1e-4).unsqueeze(0)
    s = x.pow(alphas)
    if w_mean is not None:
        s = s / w_mean.clamp_min(1e-4).unsqueeze(0).pow(1 - alphas)
    s = s.clamp_min(1e-4)
    return s / (s.amax(dim=1, keepdim=True) * s.amin(dim=1, keepdim=True)).sqrt()


def search_scale(weight: torch.Tensor, stats: InputStats, spec: QuantSpec, n_grid: int, duo: bool = False,
                 score=None, damp: float = 0.0):
    """Best per-input-channel scale for the stacked weights [out, in] of one group.
    ``score(candidate weight [out, in])`` replaces the linear proxy when given (the block loss).
    Returns (scale [in], α index, losses per α)."""
    W = weight.float()
    w_mean = None
    if duo:
        g = spec.group_len(W.shape[1])
        wg = W.abs().view(W.shape[0], -1, g)
        w_mean = (wg / wg.amax(dim=-1, keepdim=True).clamp_min(1e-8)).view_as(W).mean(dim=0)
    scales = candidate_scales(stats.mean_abs, n_grid, w_mean)
    if score is not None:
        losses = torch.tensor([score(fake_quantize(W * s, spec) / s) for s in scales])
        best = int(torch.argmin(losses))
        return scales[best], best, losses
    chunk = min(n_grid, max(1, _CHUNK_ELEMENTS // W.numel()))
    dtype = ranking_dtype()
    factor = gram_factor(damped(stats.gram, damp)).to(dtype)
    # buffers for all chunks, every step in place: fresh ones cost more in page faults than in arithmetic
    E = torch.empty(chunk, *W.shape, device=W.device)
    E_low = E if dtype == E.dtype else torch.empty_like(E, dtype=dtype)
    EG = torch.empty_like(E_low)
    losses = []
    for c in range(0, n_grid, chunk):
        s = scales[c : c + chunk].unsqueeze(1)  # [k, 1, in]
        e = torch.mul(W, s, out=E[: len(s)])
        fake_quantize(e, spec, inplace=True)
        e.div_(s).sub_(W)  # the error's negative: the proxy is quadratic
        e = e if e.dtype == dtype else E_low[: len(s)].copy_(e)
        losses.append(factor_loss(e, factor, out=EG[: len(s)]))
    losses = torch.cat(losses)
    best = int(torch.argmin(losses))
    return scales[best], best, losses


def search_clip(weight: torch.Tensor, stats: InputStats, spec: QuantSpec, max_shrink: float, n_grid: int,
                two_sided: bool = True, refine: int = 0, damp: float = 0.0) -> Clip:
    """Per (output row, input group) clip minimising the row's output error ``e G eᵀ``, over shrink
    ratios r in ``[1 - max_shrink, 1]``.

    Two-sided (asymmetric quantization): the group's max and its min are shrunk separately, to
    ``r_hi·max`` and ``r_lo·min``, searched over pairs of ratios (a coarse grid, then each group's
    neighbours on the fine one); returns ``Bounds`` [out, n_groups].
    One-sided (symmetric quantization, or ``two_sided=False``: the reference AWQ's clip): the range
    ``[-r·max|w|, r·max|w|]``; returns the bound [out, n_groups].

    The first pass scores each group alone, by the diagonal block ``e_g G_gg e_gᵀ`` (the reference
    AWQ's per-group output error). Each of ``refine`` further passes rescores every group's
    candidates with its cross terms to the other groups' current errors, ``+ 2 e_g Σ_h G_gh e_hᵀ``:
    clipping biases a group's error, and inputs with a nonzero mean add such biases up across the
    groups of a row. Groups move together, so a row keeps the new clips only if its full error drops."""
    W = weight.float()
    out_f, in_f = W.shape
    g = spec.group_len(in_f)
    ng = in_f // g
    gram = damped(stats.gram, damp)
    dtype = ranking_dtype()
    blocks = gram.view(ng, g, ng, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1).contiguous()  # [ng, g, g]
    factors = gram_factor(blocks).to(dtype)
    # the search works group-major, [ng, out, g], so that each group's error meets its Gram block in
    # one batched product without a copy per candidate
    Wg = _to_group_major(W, ng)
    flat = QuantSpec(spec.bits, PER_CHANNEL, spec.symmetric)  # one group per row of Wg
    E = torch.empty_like(Wg)
    E_low = E if dtype == E.dtype else torch.empty_like(Wg, dtype=dtype)
    EL = torch.empty_like(E_low)

    W_rows = Wg.view(-1, g)
    full = group_minmax(W, spec)  # [out, ng] each: what the candidate clips shrink
    minmax = full.map(_group_major)  # the same, one value per row of W_rows

    def error(clip: Clip, cross: torch.Tensor | None = None) -> torch.Tensor:  # [ng, out]
        rows = clip.map(_group_major) if isinstance(clip, Bounds) else _group_major(clip)
        scale, zero = range_qparams(minmax, flat, rows)
        e = rounding_error(W_rows, scale, zero, flat, out=E.view(-1, g)).view_as(Wg)
        own = torch.bmm(e if e.dtype == dtype else E_low.copy_(e), factors, out=EL)
        err = own.float().square_().sum(dim=-1)  # fp32 sums: in bf16 they blur near-ties between candidates
        return err if cross is None else err.add_(torch.linalg.vecdot(e, cross), alpha=2)

    one_sided = spec.symmetric or not two_sided
    if one_sided:
        absmax = group_absmax(W, spec)
        best = _search_one_sided(absmax, max_shrink, n_grid, error)
    else:
        best, shrink = _search_two_sided(full, max_shrink, n_grid, error)
    def full_error(clip: Clip):  # the error E [out, in] of a clip, E @ G, and each row's e G eᵀ
        E_ = fake_quantize(W, spec, clip) - W
        EG_ = E_ @ gram
        return E_, EG_, (EG_ * E_).sum(dim=-1, keepdim=True)

    if refine:
        E_full, EG_full, row_err = full_error(best)
    for _ in range(refine):
        cross = _to_group_major(EG_full, ng).sub_(torch.bmm(_to_group_major(E_full, ng), blocks))
        with_cross = lambda c: error(c, cross)  # noqa: E731
        if one_sided:
            cand = _search_one_sided(absmax, max_shrink, n_grid, with_cross)
        else:
            cand, cand_shrink = _search_two_sided(full, max_shrink, n_grid, with_cross, around=shrink)
        E_new, EG_new, new_err = full_error(cand)
        keep = new_err < row_err  # [out, 1]
        best = _where(keep, cand, best)
        if not one_sided:
            shrink = _where(keep, cand_shrink, shrink)
        E_full, EG_full = _where(keep, E_new, E_full), _where(keep, EG_new, EG_full)
        row_err = torch.minimum(new_err, row_err)
    return best


def _search_one_sided(absmax, max_shrink, n_grid, error) -> torch.Tensor:
    """The best bound ``r·absmax`` per group (``absmax``: ``group_absmax`` of the weight)."""
    return _pick([absmax * (1 - i / n_grid) for i in range(max(1, int(max_shrink * n_grid)))], error)


# a refining pass tries the fine-grid pairs within this many steps of each group's current pair: 25
# evaluations; with radius 3 (49) it closed less of the gap on average, every pair (100) no more (README)
REFINE_RADIUS = 2


def _search_two_sided(full: Bounds, max_shrink, n_grid, error, around=None) -> tuple[Bounds, tuple]:
    """The best clip and its (max, min) shrink ratios per group (``full``: ``group_minmax`` of the
    weight, the bounds that the ratios shrink). From scratch: every pair on a grid
    twice as coarse, then each group's 8 neighbours on the fine grid (25 + 8 error evaluations
    instead of 100 for the default grid, the same resolution). ``around`` (shrink ratios): the
    fine-grid pairs within ``REFINE_RADIUS`` steps of them."""
    steps = max(1, int(max_shrink * n_grid))
    top, step = (steps - 1) / n_grid, 1 / n_grid

    def clip(p):
        return Bounds(full.lo * (1 - p[1]), full.hi * (1 - p[0]))

    def window(center, radius):  # the center first: ties keep it
        return [center] + [((center[0] + da * step).clamp(0, top), (center[1] + db * step).clamp(0, top))
                           for da in range(-radius, radius + 1) for db in range(-radius, radius + 1) if da or db]

    if around is None:
        coarse = [i / n_grid for i in range(0, steps, 2)]
        pairs = [(torch.full_like(full.hi, a), torch.full_like(full.hi, b)) for a in coarse for b in coarse]
        around, radius = _pick(pairs, lambda p: error(clip(p))), 1
    else:
        radius = REFINE_RADIUS
    shrink = _pick(window(around, radius), lambda p: error(clip(p)))
    return clip(shrink), shrink


def _pick(candidates: list, error) -> object:
    """Per group, the candidate with the least ``error`` ([ng, out]); a candidate is an [out, ng] tensor
    or a tuple of them, chosen together."""
    best, best_err = candidates[0], error(candidates[0])
    for cand in candidates[1:]:
        err = error(cand)
        best = _where((err < best_err).t(), cand, best)
        best_err = torch.minimum(err, best_err)
    return best


def _where(mask: torch.Tensor, new, old):
    """``torch.where(mask, new, old)`` for a tensor, or field by field for a tuple (``Bounds`` included)."""
    if not isinstance(old, tuple):
        return torch.where(mask, new, old)
    parts = [torch.where(mask, n, o) for n, o in zip(new, old)]
    return Bounds(*parts) if isinstance(old, Bounds) else tuple(parts)


def _to_group_major(W: torch.Tensor, ng: int) -> torch.Tensor:
    """[out, in] → [ng, out, g] (contiguous)."""
    return W.view(W.shape[0], ng, -1).transpose(0, 1).contiguous()


def _group_major(t: torch.Tensor) -> torch.Tensor:
    """[out, ng] per-group values → [ng·out, 1], the row order of the group-major search."""
    return t.t().reshape(-1, 1)


@torch.no_grad()
def fold_scale(layer: torch.nn.Module, group: ScaleGroup, scale: torch.Tensor, mapping: ArchMapping) -> None:
    """Divide the preceding op's output by ``scale`` and multiply the Linears' inputs by it (exact)."""
    prev = layer.get_submodule(group.prev)
    if isinstance(prev, torch.nn.Linear):
        prev.weight.div_(scale.view(-1, 1).to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias.div_(scale.to(prev.bias.dtype))
    elif mapping.norm_plus_one:
        prev.weight.copy_((1 + prev.weight.float()) / scale - 1)
    else:
        prev.weight.div_(scale.to(prev.weight.dtype))
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(scale.to(prev.bias.dtype))
    for name in group.linears:
        lin = layer.get_submodule(name)
        lin.weight.mul_(scale.view(1, -1).to(lin.weight.dtype))


def can_fold(layer, group: ScaleGroup) -> bool:
    """A Linear→Linear fold needs the previous Linear's outputs to line up 1:1 with the next inputs
    (false for v→o under grouped-query attention)."""
    prev = layer.get_submodule(group.prev)
    if not isinstance(prev, torch.nn.Linear):
        return True
    return all(prev.out_features == layer.get_submodule(n).in_features for n in group.linears)


@register("awq", AWQConfig)
@register("awq_scale", AWQConfig, clip=False)  # ablation: activation-aware scaling without the clip search
@register("awq_clip", AWQConfig, scale=False)  # ablation: the clip search alone
class AWQ(Method):
    def check_config(self, cfg) -> None:
        check_search(cfg)

    @torch.no_grad()
    def quantize(self, model, calib, cfg) -> QuantResult:
        return quantize_layerwise(self.name, model, calib, cfg, self._layer)

    def _layer(self, runner, i, mapping, spec, cfg, skipped, stats_out, qweights) -> set[str]:
        """Scale, clip and quantize decoder layer ``i``; returns the names of its quantized Linears."""
        layer = runner.layers[i]
        linears, stats, block_inputs = collect_layer(runner, i, mapping, cfg, also_advance=not cfg.sequential)
        layer_info = {"layer": f"{mapping.layers}.{i}"}
        if cfg.scale:
            layer_info.update(scale_layer(layer, linears, stats, mapping, spec, cfg, skipped, block_inputs))
        clips = clip_layer(linears, stats, mapping, spec, cfg) if cfg.clip else {}
        prefix = f"{mapping.layers}.{i}."
        full = {prefix + n: lin for n, lin in linears.items()}
        st, qw = fake_quantize_linears(full, spec, clips={prefix + n: c for n, c in clips.items()})
        stats_out.append({**layer_info, "weight_mse": sum(s["weight_mse"] for s in st) / len(st)})
        qweights.update(qw)
        if cfg.sequential:
            runner.advance(i)
        return set(full)


def check_search(cfg) -> None:
    """MethodError for search settings that cannot work (awq and awq_gptq, before the model loads)."""
    if cfg.n_grid < 1:
        raise MethodError(f"method.n_grid={cfg.n_grid}: choose a whole number of grid points, at least 1")
    if not 0 <= cfg.max_shrink < 1:
        raise MethodError(f"method.max_shrink={cfg.max_shrink}: choose a share of the range in [0, 1)")
    if cfg.clip_refine < 0:
        raise MethodError(f"method.clip_refine={cfg.clip_refine}: choose a number of passes, 0 or more")
    if cfg.search_damp < 0:
        raise MethodError(f"method.search_damp={cfg.search_damp}: choose a share of the mean diagonal, 0 or more")


def collect_layer(runner: LayerwiseRunner, i: int, mapping: ArchMapping, cfg, also_advance: bool,
                  linears: dict | None = None):
    """Layer ``i``'s Linears (or the given ones), their input statistics and (for ``loss=block``) the
    recorded block inputs, from one forward pass over the calibration windows."""
    layer = runner.layers[i]
    linears = layer_linears(layer) if linears is None else linears
    blocks = block_names(layer, linears, mapping) if cfg.scale and cfg.loss == "block" else []
    with record_inputs(layer, blocks, rows_per_batch(cfg.block_samples, len(runner.hidden))) as block_inputs:
        stats = runner.collect_stats(i, linears, mapping, also_advance=also_advance)
    return linears, stats, block_inputs


def block_names(layer, linears: dict, mapping: ArchMapping) -> list[str]:
    """The blocks the block loss needs in this layer (groups that are present and can be folded)."""
    return [g.block for g in mapping.scale_groups
            if g.block and all(n in linears for n in g.linears) and can_fold(layer, g)]


def block_score(layer, group: ScaleGroup, linears: dict, inputs) -> Callable[[torch.Tensor], float]:
    """The block loss of ``group`` as a function of its stacked candidate weight."""
    loss = BlockLoss(layer.get_submodule(group.block), inputs)
    mods = [linears[n] for n in group.linears]
    rows = [m.out_features for m in mods]

    def score(W: torch.Tensor) -> float:
        return loss(dict(zip(mods, W.split(rows))))

    return score


def scale_layer(layer, linears: dict, stats: dict, mapping: ArchMapping, spec: QuantSpec, cfg, skipped: set,
                block_inputs: dict | None = None, scales: dict | None = None) -> dict:
    """Search and fold the scale of every foldable group of ``linears`` (all of one decoder layer's, or
    some); returns its evidence (α and loss vs RTN per group). ``scales``, if given, receives each
    folded scale under its group's ``prev``."""
    info = {}
    for group in mapping.scale_groups:
        if not all(n in linears for n in group.linears):
            continue
        if not can_fold(layer, group):
            skipped.add(f"{group.prev}->{','.join(group.linears)}")
            continue
        W = torch.cat([linears[n].weight for n in group.linears])
        st = stats[group.linears[0]]
        score = None
        if block_inputs and group.block in block_inputs:
            score = block_score(layer, group, linears, block_inputs[group.block])
        scale, best, losses = search_scale(W, st, spec, cfg.n_grid, cfg.duo_scaling, score, cfg.search_damp)
        fold_scale(layer, group, scale, mapping)
        if scales is not None:
            scales[group.prev] = scale
        st.gram.div_(scale.view(-1, 1) * scale.view(1, -1))  # inputs are now x / s
        st.abs_sum.div_(scale)
        info[f"alpha[{group.prev}]"] = best / cfg.n_grid
        info[f"loss_vs_rtn[{group.prev}]"] = float(losses[best] / losses[0].clamp_min(1e-30))
    return info


def clip_ratios(linears: dict, stats: dict, mapping: ArchMapping, spec: QuantSpec, cfg) -> dict:
    """``clip_layer``'s ranges as shares of each group's range (``quantizer.clip_ratio``): what GPTQ
    keeps while its updates change the weights."""
    clips = clip_layer(linears, stats, mapping, spec, cfg)
    return {n: clip_ratio(c, linears[n].weight, spec) for n, c in clips.items()}


def clip_layer(linears: dict, stats: dict, mapping: ArchMapping, spec: QuantSpec, cfg) -> dict:
    """The clip search for every Linear of one layer (q/k too with ``clip_qk``)."""
    skip = () if cfg.clip_qk else mapping.attention_logits
    two_sided = cfg.clip_range == "asymmetric"
    return {name: search_clip(lin.weight, stats[name], spec, cfg.max_shrink, cfg.n_grid, two_sided, cfg.clip_refine,
                              cfg.search_damp)
            for name, lin in linears.items() if name.split(".")[-1] not in skip}
