"""Decision report: ``python -m harness.report [RUN_DIR ... | --store results/store [--model M]] --out DIR
[--max-weight-mb MB] [--runtime any|vllm|transformers]``.

Writes ``DIR/report.md`` (figures beside it in ``DIR/plots/``) and one self-contained
``DIR/report.html`` (figures embedded as base64 PNG). Per model it opens with the first screen
(:func:`at_a_glance`: the verdict sentence, variant × suite recovery with significance marks, quality
vs weight size), then the details: the recommendation (per task metric with signal; the metrics
without signal listed once), deployment (weight bytes, runtimes, constraints), fidelity statistics
and flips vs FP, perplexity, scores vs FP (heatmap), quality vs time. A report is a list of blocks
(harness.blocks: headings, paragraphs, tables, figures) rendered twice. Every section reads the
one comparison frame (harness.decide.frame); studies add their own sections
(harness.experiments.section_blocks), and further sections can be added with
``register_section(fn)``, where ``fn(frame) -> list[Block]`` returns [] when its rows are absent.
Run directories that hold ``layers.parquet`` add a per-layer evidence section.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness import blocks, decide, experiments, results, runtimes, store
from harness.blocks import Block
from harness.config import DecisionConfig
from harness.errors import HarnessError
from methods.fp import FP

SECTIONS: list[Callable[[pd.DataFrame], list[Block]]] = [experiments.section_blocks]


def register_section(fn: Callable[[pd.DataFrame], list[Block]]) -> Callable:
    """Add a section after the built-in ones; ``fn`` gets one model's comparison frame."""
    SECTIONS.append(fn)
    return fn


# ---------------------------------------------------------------- sections

def _header(f: pd.DataFrame, runs: int) -> list[Block]:
    shas = ", ".join(sorted(f["git_sha"].dropna().astype(str).unique())) if "git_sha" in f else "?"
    calibs = sorted(f.loc[f["method"] != FP, "calib"].dropna().astype(str).unique())
    out = [Block("p", f"{runs} run(s); git {shas}; calibration: {', '.join(calibs) or '—'}.")]
    notes = sorted(n for n in f["model_note"].dropna().astype(str).unique() if n) if "model_note" in f else []
    out += [Block("p", f"Note: {n}.") for n in notes]
    return out


def _tolerance_note(cfg: DecisionConfig) -> Block:
    return Block("p", f"Tolerance vs FP: perplexity-like metrics +{cfg.ppl_rel_tol:.0%} relative, scores "
                      f"−{cfg.score_abs_tol:g} absolute (or not significantly different). Ties use "
                      f"{cfg.confidence:.0%} bootstrap intervals of the difference ({cfg.n_boot} resamples, "
                      f"seed {cfg.seed}); 'no significant difference' when the interval contains 0.")


def _variants_table(table: pd.DataFrame) -> pd.DataFrame:
    v = table.sort_values("bytes")
    return pd.DataFrame({
        "variant": v["variant"], "weights": v["bytes"].map(decide.mb),
        "quant s": v["seconds"].map(lambda s: f"{s:.1f}"),
        "within tolerance": [f"{int(w)}/{int(n)}" for w, n in zip(v["within"], v["tasks"])],
        "best or tied": [f"{int(t)}/{int(n)}" for t, n in zip(v["top"], v["tasks"])],
        "worst vs FP": v["worst"].fillna("—")})


def _no_signal_blocks(dec: decide.Decision) -> list[Block]:
    if not dec.no_signal:
        return []
    t = pd.DataFrame([{"suite": n.suite, "task": n.task, "metric": n.metric, "why": n.why} for n in dec.no_signal])
    return [Block("h3", "No signal at this size"),
            Block("p", "These task metrics take no part in any pick, count or vote: FP and the variants sit "
                       "on the floor or the ceiling, or no two of them differ significantly. More items "
                       "(a larger eval size) would be needed for them to say anything."),
            Block("table", table=t)]


def _recommendation(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig) -> list[Block]:
    out = [Block("h2", "Recommendation"), Block("p", f"**Overall: {dec.overall or 'none'}** — {dec.overall_why}."),
           _tolerance_note(cfg)]
    if dec.tasks:
        t = pd.DataFrame([{"suite": p.suite, "task": p.task, "metric": p.metric, "recommended": p.variant,
                           "why": p.why} for p in dec.tasks])
        out += [Block("h3", "Per task (task metrics with signal)"), Block("table", table=t)]
    out += _no_signal_blocks(dec)
    if not dec.table.empty:
        out += [Block("h3", "Variants"), Block("table", table=_variants_table(dec.table))]
    return out


# ---------------------------------------------------------------- at a glance (the first screen)

WORSE_MARK, BETTER_MARK, PICK_MARK, EXCLUDED_MARK, UNLOADABLE_MARK = "▼", "▲", "★", "✗", "†"


def _judged(main: pd.DataFrame) -> pd.DataFrame:
    """Quantized rows that inform the decision and have an FP value to compare with."""
    return main[main["signal"] & (main["method"] != FP) & main["fp_value"].notna()]


def _headline_metric(rows: pd.DataFrame) -> str:
    """What a suite is summarised by at a glance: a task score when one has signal, else perplexity,
    else another lower-is-better metric; the one on most tasks first."""
    tasks = rows.groupby("metric")["task"].nunique()
    return min(tasks.index, key=lambda m: (results.lower_is_better(m), not results.is_perplexity(m), -tasks[m], m))


def _marks(rows: pd.DataFrame) -> str:
    """▼ / ▲: significantly worse / better than FP on every task of the cell; ▼k/n on k of n."""
    out = []
    for mark, hit in ((WORSE_MARK, rows["loss"] > 0), (BETTER_MARK, rows["loss"] < 0)):
        k = int((rows["significant"].astype(bool) & hit).sum())
        out += [mark if k == len(rows) else f"{mark}{k}/{len(rows)}"] if k else []
    return " ".join(out)


def _glance_cell(rows: pd.DataFrame) -> str:
    """Recovery (quantized ÷ FP) for a score, change vs FP for a lower-is-better metric; mean over tasks."""
    if results.lower_is_better(rows["metric"].iloc[0]):
        text = f"{rows['loss'].mean() * 100:+.1f}%"
    else:
        rec = rows["recovery"].dropna()
        text = f"{rec.mean() * 100:.0f}%" if len(rec) else f"{-rows['loss'].mean():+.3f}"
    return f"{text} {_marks(rows)}".strip()


def _loads_anywhere(r) -> bool:
    load = runtimes.loadable(r["method"], int(r["bits"]), int(r["group_size"]), decide.is_symmetric(r))
    return any(load.values())


def _variant_tag(r, dec: decide.Decision) -> str:
    variant = r["variant"]
    tag = PICK_MARK if variant == dec.overall else (EXCLUDED_MARK if variant in dec.excluded else "")
    return f"{tag} {variant}".strip() + ("" if _loads_anywhere(r) else f" {UNLOADABLE_MARK}")


def glance_table(main: pd.DataFrame, dec: decide.Decision) -> pd.DataFrame:
    """Variant × suite: each suite's headline metric (recovery or change vs FP) with significance
    marks, and the weight size; the variant is marked when recommended, excluded or loadable nowhere."""
    judged = _judged(main)
    heads = {suite: _headline_metric(g) for suite, g in judged.groupby("suite", sort=True)}
    firsts = {v: g.iloc[0] for v, g in main.groupby("variant", sort=False)}
    rows = []
    for variant in [v for v in results.variant_order(main) if v != FP]:
        g = judged[judged["variant"] == variant]
        row = {"variant": _variant_tag(firsts[variant], dec), "weights": decide.mb(firsts[variant]["weight_bytes"])}
        for suite, metric in heads.items():
            cell = g[(g["suite"] == suite) & (g["metric"] == metric)]
            row[f"{suite}: {metric}"] = _glance_cell(cell) if len(cell) else "—"
        rows.append(row)
    return pd.DataFrame(rows)


def _size_of(main: pd.DataFrame, nbytes: float) -> str:
    fp = main.loc[main["method"] == FP, "weight_bytes"]
    share = f", {nbytes / fp.iloc[0]:.0%} of FP" if len(fp) and fp.iloc[0] > 0 else ""
    return f"{decide.mb(nbytes)}{share}"


def _verdict_reason(main: pd.DataFrame, dec: decide.Decision, row: pd.Series) -> str:
    tasks = int(row["tasks"])
    if not (main["method"] == FP).any():
        return "no FP reference rows, so only its size is known"
    if row["within"] == tasks:
        return f"within tolerance of FP on all {tasks} task metrics with signal, and the smallest variant that is"
    others = dec.table[dec.table["variant"] != dec.overall].sort_values("top", ascending=False)
    runner = f" (next: {others.iloc[0]['variant']}, {int(others.iloc[0]['top'])})" if len(others) else ""
    return (f"no variant stays within tolerance of FP everywhere; it is the best or tied with the best on "
            f"{int(row['top'])} of {tasks} task metrics with signal{runner}, and its worst loss is {row['worst']}")


def verdict(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig) -> str:
    """The one sentence at the top: what to ship and why."""
    if dec.overall is None:
        return f"**No recommendation** — {dec.overall_why}."
    row = dec.table.set_index("variant").loc[dec.overall]
    excluded = (f"; {len(dec.excluded)} variant(s) excluded by the constraints ({decide.constraints_text(cfg)})"
                if dec.excluded else "")
    return f"**Ship {dec.overall}** ({_size_of(main, row['bytes'])}) — {_verdict_reason(main, dec, row)}{excluded}."


def _size_points(main: pd.DataFrame, dec: decide.Decision) -> tuple[pd.DataFrame, str]:
    """Per variant (FP included): weight MB and the mean difference to FP in % of FP's value with the
    mean of its per-task interval bounds: perplexity where it has signal, else higher-is-better scores."""
    base = main[main["signal"] & main["fp_value"].notna()]
    ppl = base[base["metric"].map(results.is_perplexity)]
    use = ppl if len(ppl) else base[~base["metric"].map(results.lower_is_better)]
    label = ("perplexity vs FP, % (mean over texts; + is worse)" if len(ppl)
             else "score vs FP, % of FP (mean over tasks; − is worse)")
    if use.empty:
        return pd.DataFrame(), label
    pct = {c: use[c].astype(float) / use["fp_value"].astype(float) * 100 for c in ("diff", "lo", "hi")}
    d = use.assign(quality=pct["diff"], lo=pct["lo"], hi=pct["hi"], weight_mb=use["weight_bytes"] / 1e6)
    pts = d.groupby("variant", as_index=False).agg(method=("method", "first"), weight_mb=("weight_mb", "first"),
                                                   quality=("quality", "mean"), lo=("lo", "mean"), hi=("hi", "mean"))
    return pts.assign(excluded=pts["variant"].isin(list(dec.excluded))), label


def _glance_figure(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig) -> Block | None:
    from harness import plots  # matplotlib only when a report is built

    pts, label = _size_points(main, dec)
    png = plots.quality_vs_size(pts, label, cfg.max_weight_mb) if not pts.empty else None
    if not png:
        return None
    return Block("figure", "Quality vs weight size, one point per variant (FP: star). Bars: the mean of the "
                           "per-task 95% intervals of the difference to FP. Hollow: excluded by a constraint.",
                 png=png, name="quality_vs_size")


def _glance_legend(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig) -> Block:
    keys = main.groupby(decide.TASK_KEY).ngroups
    marks = (f"{WORSE_MARK}/{BETTER_MARK}: significantly worse/better than FP ({cfg.confidence:.0%} interval) on "
             f"every task, {WORSE_MARK}k/n on k of n. {PICK_MARK} recommended, {EXCLUDED_MARK} excluded by a "
             f"constraint, {UNLOADABLE_MARK} no runtime loads it as exported (see Deployment).")
    return Block("p", f"Cells: each suite's headline metric, mean over its tasks — scores as recovery "
                      f"(quantized ÷ FP), perplexity-like metrics as change vs FP (+ is worse). {marks} "
                      f"{len(dec.no_signal)} of {keys} task metrics have no signal at this size and take no part "
                      f"(listed under Recommendation). Details follow.")


def at_a_glance(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig, figures: bool) -> list[Block]:
    """The first screen: the verdict, variant × suite recovery, quality vs size, then the legend."""
    table = Block("table", table=glance_table(main, dec))
    fig = _glance_figure(main, dec, cfg) if figures else None
    return [Block("p", verdict(main, dec, cfg)), blocks.row(table, fig) if fig else table, _glance_legend(main, dec, cfg)]


# ---------------------------------------------------------------- deployment

def _deployment_row(r, dec: decide.Decision, fp_bytes: float) -> dict:
    load = runtimes.loadable(r["method"], int(r["bits"]), int(r["group_size"]), decide.is_symmetric(r))
    b = float(r["weight_bytes"])
    meets = "reference" if r["method"] == FP else ("no: " + dec.excluded[r["variant"]] if r["variant"] in dec.excluded
                                                  else "yes")
    return {"variant": r["variant"], "weights": decide.mb(b),
            "of FP": f"{b / fp_bytes:.0%}" if fp_bytes and math.isfinite(b) else "—",
            **{rt: fmt or "—" for rt, fmt in load.items()}, "meets constraints": meets}


def _not_loadable_notes(firsts: dict) -> list[str]:
    """One sentence per distinct reason, naming the variants it applies to."""
    reasons: dict[str, list[str]] = {}
    for r in firsts.values():
        for rt in runtimes.RUNTIMES:
            why = runtimes.why_not(r["method"], int(r["bits"]), int(r["group_size"]), decide.is_symmetric(r), rt)
            if why and r["variant"] not in reasons.setdefault(why, []):
                reasons[why].append(r["variant"])
    return [f"{why} ({', '.join(variants)})." for why, variants in reasons.items()]


def deployment(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig) -> list[Block]:
    """Weight bytes per variant, which runtime loads it (harness/runtimes.py), and the constraints."""
    firsts = {v: g.iloc[0] for v, g in main.groupby("variant", sort=False)}
    order = [v for v in results.variant_order(main) if v in firsts]
    fp_bytes = float(firsts[FP]["weight_bytes"]) if FP in firsts else math.nan
    t = pd.DataFrame([_deployment_row(firsts[v], dec, fp_bytes) for v in order])
    out = [Block("h2", "Deployment"),
           Block("p", f"Constraints: {decide.constraints_text(cfg)} (set with `--max-weight-mb MB` and "
                      f"`--runtime {'|'.join(runtimes.CHOICES)}`, or DecisionConfig.max_weight_mb / .runtime); a "
                      "variant that fails them is never recommended. Weights: packed codes + one fp16 scale and "
                      "integer zero per group + the unquantized rest at 16 bits. A runtime cell names the "
                      "checkpoint format it loads the variant as; this harness exports AWQ-GEMM at 4 bits. "
                      "The runtimes' constraints are a cited table in harness/runtimes.py."),
           Block("table", table=t)]
    notes = _not_loadable_notes(firsts)
    return out + ([Block("p", "Not loadable as exported: " + " ".join(notes))] if notes else [])


# ---------------------------------------------------------------- fidelity statistics and flips

def _pooled(rows: pd.DataFrame) -> np.ndarray:
    parts = [np.asarray(s, dtype=float) for s in rows.get(results.SAMPLES, pd.Series(dtype=object))
             if isinstance(s, (list, np.ndarray)) and len(s)]
    return np.concatenate(parts) if parts else np.array([])


def _nll_shift(main: pd.DataFrame, suite: str, variant: str) -> np.ndarray:
    """Per item: the variant's answer NLL − FP's (same items, same order), pooled over the suite's tasks."""
    nll = main[(main["suite"] == suite) & (main["metric"] == "answer_nll")]
    shifts = []
    for _, g in nll.groupby("task"):
        fp, q = _pooled(g[g["method"] == FP]), _pooled(g[g["variant"] == variant])
        shifts += [q - fp] if len(fp) and len(fp) == len(q) else []
    return np.concatenate(shifts) if shifts else np.array([])


def _fidelity_row(main: pd.DataFrame, suite: str, variant: str, kl: np.ndarray) -> dict:
    d, shift = decide.distribution(kl), decide.distribution(_nll_shift(main, suite, variant))
    agree = _pooled(main[(main["suite"] == suite) & (main["variant"] == variant) & (main["metric"] == "top1_agree_fp")])
    g = lambda v: "—" if not math.isfinite(v) else f"{v:.3g}"  # noqa: E731
    return {"suite": suite, "variant": variant, "items": len(kl), "KL mean": g(d["mean"]), "KL median": g(d["median"]),
            "KL p99": g(d["p99"]), "KL p99.9": g(d["p99.9"]),
            "same top token": g(float(agree.mean())) if len(agree) else "—",
            "Δ answer NLL median": g(shift["median"]), "Δ answer NLL p99": g(shift["p99"])}


def fidelity_table(main: pd.DataFrame) -> pd.DataFrame:
    """Per suite × variant: KL to FP (mean, median, p99, p99.9 over items), same-top-token rate and
    the per-item change of the reference answer's NLL vs FP; from per-item samples."""
    kl = main[(main["metric"] == "kl_to_fp") & (main["method"] != FP)]
    order = {v: i for i, v in enumerate(results.variant_order(main))}
    rows = [_fidelity_row(main, suite, variant, _pooled(g)) for (suite, variant), g in kl.groupby(["suite", "variant"])
            if len(_pooled(g))]
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    return t.sort_values(["suite", "variant"], key=lambda c: c.map(order) if c.name == "variant" else c)


def flip_table(main: pd.DataFrame) -> pd.DataFrame:
    """Pass/fail and multiple-choice metrics with an FP row: per variant "−lost +gained" items vs FP."""
    fp = {tuple(r[k] for k in decide.TASK_KEY): r for _, r in main[main["method"] == FP].iterrows()}
    order = [v for v in results.variant_order(main) if v != FP]
    rows = []
    for key, g in main[main["method"] != FP].groupby(decide.TASK_KEY, sort=True):
        if key not in fp:
            continue
        ref = fp[key].get(results.SAMPLES)
        got = {r["variant"]: decide.flips(ref, r.get(results.SAMPLES)) for _, r in g.iterrows()}
        got = {v: fl for v, fl in got.items() if fl is not None}
        if got:
            n = next(iter(got.values())).n
            rows.append({**dict(zip(decide.TASK_KEY, key)), "n": n, "signal": "yes" if g["signal"].any() else "no",
                         **{v: f"−{got[v].lost} +{got[v].gained}" for v in order if v in got}})
    return pd.DataFrame(rows)


def fidelity(main: pd.DataFrame) -> list[Block]:
    t, flipped = fidelity_table(main), flip_table(main)
    if t.empty and flipped.empty:
        return []
    out = [Block("h2", "Fidelity to FP")]
    if len(t):
        out += [Block("p", "Per item (one prompt; its KL, top-token agreement and answer NLL are means over the "
                           "answer's tokens), pooled over a suite's tasks; quantiles interpolate linearly (numpy's "
                           "default). llama.cpp's perplexity tool reports these over tokens: the suites store "
                           "per-item means only, so here p99 and p99.9 are over items (with 20–30 items, close to "
                           "the maximum), and the per-token change of the reference token's probability is not "
                           "available; Δ answer NLL (quantized − FP, per item) stands in for it."),
                Block("table", table=t)]
    if len(flipped):
        out += [Block("h3", "Flips vs FP"),
                Block("p", "Items that turn right↔wrong against FP (same items, same order): −lost (right with FP, "
                           "wrong quantized) +gained. Equal accuracy can hide many flips."),
                Block("table", table=flipped)]
    return out


def _perplexity(main: pd.DataFrame, figures: bool) -> list[Block]:
    out = []
    for metric in sorted(m for m in main["metric"].unique() if results.is_perplexity(m)):
        table = results.comparison(main, metric)
        if not table.empty:
            out += _perplexity_metric(main[main["metric"] == metric], metric, table, figures)
    return out


def _perplexity_metric(p: pd.DataFrame, metric: str, table: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    seqlens = ", ".join(map(str, sorted(p["seqlen"].dropna().astype(int).unique()))) if "seqlen" in p else "?"
    out = [Block("h2", f"Perplexity ({metric}, lower is better)"),
           Block("p", f"Token-level perplexity over non-overlapping windows of {seqlens} tokens; "
                      "± standard error over windows.")]
    if figures:
        png = plots.perplexity_grid(p, metric)
        if png:
            out.append(Block("figure", "Geometric mean over texts by method × bits × group size; "
                                       "dashed: FP.", png=png, name=f"perplexity_{metric}"))
    out.append(Block("table", table=table))
    if {"windows", "tokens"} <= set(p.columns):
        keys = (["suite"] if p["suite"].nunique() > 1 else []) + ["task"]
        detail = p.drop_duplicates(subset=keys)[keys + ["windows", "tokens"]].copy()
        detail[["windows", "tokens"]] = detail[["windows", "tokens"]].astype("Int64")
        out += [Block("p", "Windows and scored tokens per text:"), Block("table", table=detail)]
    return out


def _delta_columns(c: pd.DataFrame, main: pd.DataFrame) -> pd.Series:
    """suite/task (with the metric where a suite has several) for up to 20 task metrics, else suite/metric."""
    if c.groupby(decide.TASK_KEY).ngroups > 20:
        return c["suite"] + "/" + c["metric"]
    several = main.groupby("suite")["metric"].nunique()
    return c["suite"] + "/" + c["task"] + [f" {m}" if several[s] > 1 else "" for s, m in zip(c["suite"], c["metric"])]


def _delta_text(change: float, diff: float, significant: bool) -> str:
    text = f"{change:+.1f}%" if math.isfinite(change) else f"{diff:+.2f}"
    return text + ("*" if significant else "")


def _delta_cells(main: pd.DataFrame) -> pd.DataFrame:
    """variant × column: ``change`` (% of FP's value, mean over the column's tasks), ``worse`` (the
    same signed so that > 0 is worse), ``significant`` (vs FP on every task of the column),
    ``signal`` (some task of the column has signal) and ``text`` (the change, * when significant)."""
    quant = main[main["method"] != FP]
    c = quant[quant["fp_value"].notna()].copy()
    if c.empty:
        return pd.DataFrame()
    c["column"] = _delta_columns(c, main)
    fp = c["fp_value"].astype(float)
    change = (c["diff"].astype(float) / fp.abs() * 100).where(fp != 0)
    low = c["metric"].map(results.lower_is_better)
    c = c.assign(change=change, worse=change.where(low, -change), significant=c["significant"].astype(bool),
                 signal=c["signal"].astype(bool))
    c = c.groupby(["variant", "column"], as_index=False).agg(
        change=("change", "mean"), worse=("worse", "mean"), diff=("diff", "mean"),
        significant=("significant", "all"), signal=("signal", "any"))
    c["text"] = [_delta_text(ch, d, sig and sg) for ch, d, sig, sg in
                 zip(c["change"], c["diff"], c["significant"], c["signal"])]
    return c


def _deltas(main: pd.DataFrame, figures: bool, cfg: DecisionConfig) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    scores = sorted(m for m in main["metric"].unique() if not results.is_perplexity(m))
    cells = _delta_cells(main)
    if not scores and (cells.empty or not figures):
        return []
    out = [Block("h2", "Scores vs FP per suite")]
    if figures and not cells.empty:
        out.append(Block("figure", "Change vs FP in % of FP's value, mean over the column's tasks (perplexity-like "
                                   "metrics: + is worse; scores: − is worse). Colour: % worse than FP on a "
                                   "symmetric log scale (linear within the tolerance), so +10% and +300% differ; "
                                   "green is better than FP. * and a frame: significantly different from FP (95% "
                                   "interval) on every task of the column. Grey: no signal at this size.",
                         png=plots.delta_heatmap(cells, results.variant_order(main), cfg.ppl_rel_tol * 100),
                         name="deltas_heatmap"))
    for metric in scores:
        table = results.comparison(main, metric)
        if not table.empty:
            direction = "lower" if results.lower_is_better(metric) else "higher"
            out += [Block("h3", f"{metric} ({direction} is better)"), Block("table", table=table)]
    return out


def _quality_points(main: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One point per variant: mean ppl change vs FP in % when perplexity rows exist, else the mean
    score change vs FP."""
    ppl = main[main["metric"].map(results.is_perplexity)]
    use, label = (ppl, "perplexity vs FP (%, mean over texts; lower is better)") if len(ppl) else (
        main, "score vs FP (mean absolute change; higher is better)")
    pts = []
    for variant, g in use.groupby("variant"):
        common = g[g["fp_value"].notna()]
        if common.empty:
            continue
        change = (common["value"] / common["fp_value"] - 1) * 100 if len(ppl) else common["value"] - common["fp_value"]
        first = g.iloc[0]
        pts.append({"variant": variant, "method": first["method"], "quality": float(change.mean()),
                    "quant_seconds": first["quant_seconds"], "weight_mb": first["weight_bytes"] / 1e6})
    return pd.DataFrame(pts), label


def _tradeoffs(main: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    pts, label = _quality_points(main)
    if pts.empty or not figures:
        return []
    png = plots.quality_scatter(pts, "quant_seconds", "quantization time (s)", label)
    if not png:
        return []
    return [Block("h2", "Quality vs cost"),
            Block("figure", "Quality vs quantization time (one point per variant; quality vs weight size is "
                            "the figure at the top).", png=png, name="quality_vs_time")]


def _calibration_table(g: pd.DataFrame) -> pd.DataFrame:
    """Calibration set (rows) × task metric (columns): change vs FP, % or points ×100."""
    low = g["metric"].map(results.lower_is_better)
    change = ((g["value"] / g["fp_value"] - 1) * 100).where(low, (g["value"] - g["fp_value"]) * 100)
    g = g.assign(col=g["task"] + " " + g["metric"], change=change)
    return g.pivot_table(index="row", columns="col", values="change", aggfunc="last")


def _calibration_matrix(main: pd.DataFrame, figures: bool) -> list[Block]:
    """Per method and format run on several calibration sets or sizes: the change vs FP per
    calibration (rows) and task (columns)."""
    from harness import plots  # matplotlib only when a report is built

    if not (main["method"] == FP).any():
        return []
    out = []
    for (method, bits, group), g in main[main["method"] != FP].groupby(["method", "bits", "group_size"]):
        g = g.assign(row=g["calib"].astype(str) + g["calib_samples"].map(lambda n: f" n={results.intish(n)}"))
        if g["row"].nunique() < 2:
            continue
        table = _calibration_table(g)
        name = f"{method} w{int(bits)} g{int(group)}"
        out += [Block("h2", "Calibration matrix")] if not out else []
        out.append(Block("p", f"{name}: change vs FP per calibration set (rows) and task (columns); "
                              "% for perplexity-like metrics (positive = worse), points ×100 for scores."))
        if figures:
            out.append(Block("figure", f"{name}: calibration set × task.", png=plots.matrix(
                table, f"{name}: change vs FP"), name=f"calib_matrix_{method}_w{int(bits)}_g{int(group)}"))
        out.append(Block("table", table=table.map(lambda v: "—" if pd.isna(v) else f"{v:+.2f}").reset_index()
                         .rename(columns={"row": "calibration"})))
    return out


def _studies(f: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    out = []
    for suite, g in f[f["study"]].groupby("suite"):
        out.append(Block("h2", f"Study: {suite}"))
        if figures:
            out.append(Block("figure", f"{suite} rows by task and variant (± stderr).", png=plots.study_bars(g),
                             name=f"study_{suite}"))
        t = g[[c for c in ("variant", "task", "metric", "value", "stderr", "n") if c in g]].copy()
        t["value"] = [results.fmt_value(v, None) for v in t["value"]]
        t["stderr"] = [results.fmt_value(v, None) for v in t["stderr"]]
        out.append(Block("table", table=t))
    return out


def _provenance(f: pd.DataFrame) -> list[Block]:
    cols = [c for c in ("run_id", "variant", "calib", "calib_samples", "config_hash", "git_sha", "started_at") if c in f]
    t = f.drop_duplicates(subset=["config_hash", "variant"])[cols]
    return [Block("h2", "Runs"), Block("table", table=t.sort_values(cols[:2]))]


# ---------------------------------------------------------------- per-layer evidence (layers.parquet)

def _stat_families(layers: pd.DataFrame) -> dict[str, list[str]]:
    """The method's numeric stat columns grouped by name before ``[``: ``alpha[input_layernorm]``
    and ``alpha[v_proj]`` are one family ``alpha``."""
    families: dict[str, list[str]] = {}
    for c in layers.columns:
        if c in results.LAYER_KEY or layers[c].dtype == bool or not pd.api.types.is_numeric_dtype(layers[c]):
            continue
        families.setdefault(str(c).split("[", 1)[0], []).append(c)
    return families


def _layer_variants(layers: pd.DataFrame, f: pd.DataFrame | None) -> pd.Series:
    """The report's variant name of every layer row (by config hash and method), else its own label."""
    names = {}
    if f is not None and not f.empty:
        names = {(h, m): v for h, m, v in zip(f["config_hash"], f["method"], f["variant"])}
    own = layers.apply(results.variant_label, axis=1)
    if layers["calib"].nunique() > 1:
        own += " " + layers["calib"].astype(str)
    return pd.Series([names.get((h, m), o) for h, m, o in zip(layers["config_hash"], layers["method"], own)],
                     index=layers.index)


def _layer_index(layer: pd.Series) -> pd.Series:
    """A number per layer for sorting and plotting: the value itself, or the last integer in a name."""
    num = pd.to_numeric(layer, errors="coerce")
    digits = layer.astype(str).map(lambda s: (re.findall(r"\d+", s) or [None])[-1])
    return num.fillna(pd.to_numeric(digits, errors="coerce"))


def per_layer(layers: pd.DataFrame, f: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(one row per variant × layer with ``layer_index`` and the mean of each stat family, the
    families). Rows of one layer (e.g. RTN's per-Linear rows) and the columns of one family (AWQ's
    per-scale-group α) are averaged."""
    families = _stat_families(layers)
    d = layers.assign(variant=_layer_variants(layers, f), layer_index=_layer_index(layers["layer"]))
    for fam, cols in families.items():
        d[f"_{fam}"] = d[cols].astype(float).mean(axis=1)
    out = d.groupby(["variant", "layer", "layer_index"], dropna=False, sort=False)[[f"_{x}" for x in families]].mean()
    out = out.rename(columns=lambda c: c[1:]).reset_index()
    return out.sort_values(["variant", "layer_index"], kind="stable").reset_index(drop=True), list(families)


def _summary_cell(g: pd.DataFrame, fam: str) -> str:
    v = g[fam].dropna()
    if v.empty:
        return "—"
    top = g.loc[v.idxmax(), "layer"]
    return f"{v.mean():.3g} ({v.min():.3g} … {v.max():.3g}, max at layer {top})"


def layer_summary(pl: pd.DataFrame, families: list[str]) -> pd.DataFrame:
    """One row per variant: layers, then per stat family the mean over layers (min … max)."""
    rows = [{"variant": v, "layers": len(g), **{fam: _summary_cell(g, fam) for fam in families}}
            for v, g in pl.groupby("variant", sort=False)]
    return pd.DataFrame(rows, columns=["variant", "layers", *families])


def layer_blocks(layers: pd.DataFrame, f: pd.DataFrame | None = None, figures: bool = False) -> list[Block]:
    """"Per-layer evidence" from ``layers.parquet`` rows (results.LAYER_KEY + the method's stat
    columns): a summary per variant and, with ``figures``, each stat per layer index. ``f``
    (the comparison frame) names the variants as the rest of the report does. [] without rows."""
    if layers is None or layers.empty:
        return []
    pl, families = per_layer(layers, f)
    if not families:
        return []
    out = [Block("h2", "Per-layer evidence"),
           Block("p", "From layers.parquet in the run directories: the statistics each method reports per "
                      "quantized layer (AWQ: α and loss vs RTN per scale group, averaged per layer; GPTQ: "
                      "gptq_loss; RTN: weight_mse per Linear, averaged per layer). Each cell: mean over "
                      "layers (lowest … highest)."),
           Block("table", table=layer_summary(pl, families))]
    if figures:
        from harness import plots  # matplotlib only when a report is built

        png = plots.layer_stats(pl, families)
        if png:
            out.append(Block("figure", "Per-layer statistics by layer index, one line per variant.", png=png,
                             name="layer_stats"))
    return out


# ---------------------------------------------------------------- the report

def _decision_blocks(main: pd.DataFrame, cfg: DecisionConfig, figures: bool) -> tuple[list[Block], list[Block]]:
    """(the first screen, the details) of the quantization comparison."""
    dec = decide.recommend(main, cfg)
    details = _recommendation(main, dec, cfg) + deployment(main, dec, cfg) + fidelity(main)
    details += _perplexity(main, figures) + _deltas(main, figures, cfg) + _tradeoffs(main, figures)
    return at_a_glance(main, dec, cfg, figures), details + _calibration_matrix(main, figures)


def _model_blocks(f: pd.DataFrame, runs: int, cfg: DecisionConfig, figures: bool, layers: pd.DataFrame | None) -> list[Block]:
    main = f[~f["study"]]
    glance, details = _decision_blocks(main, cfg, figures) if not main.empty else ([], [])
    out = glance + _header(f, runs) + details
    if layers is not None and not layers.empty:
        out += layer_blocks(layers[layers["config_hash"].isin(f["config_hash"])], f, figures)
    out += _studies(f, figures)
    for section in SECTIONS:
        out += section(f)
    return out + _provenance(f)


def build(df: pd.DataFrame, title: str = "quant-harness decision report", figures: bool = True,
          cfg: DecisionConfig | None = None, layers: pd.DataFrame | None = None) -> list[Block]:
    """The report's blocks: per model, the sections above, all read from one comparison frame.
    ``layers``: per-layer rows (results.read_layers) for the per-layer evidence section."""
    cfg = cfg or DecisionConfig()
    out = [Block("h1", title)]
    for model, rows in df.groupby("model", sort=True):
        out.append(Block("h2" if df["model"].nunique() == 1 else "h1", f"Model: {model}"))
        out += _model_blocks(decide.frame(rows, cfg), rows["config_hash"].nunique(), cfg, figures, layers)
    return out


def render(df: pd.DataFrame, title: str = "quant-harness report", layers: pd.DataFrame | None = None) -> str:
    """The Markdown report without figures (what each run directory gets)."""
    return blocks.to_markdown(build(df, title, figures=False, layers=layers), plots_dir=None)


def load_rows(runs: list[str], store_dir: str | None, model: str | None, method: str | None) -> pd.DataFrame:
    frames = []
    if store_dir:
        frames.append(store.load(store_dir, model=model, method=method))
    if runs:
        missing = [r for r in runs if not Path(r).exists()]
        if missing:
            raise HarnessError(f"no such run directory or file: {missing[0]}")
        df = results.read_runs(runs)
        if df.empty:
            raise HarnessError(f"no results.csv or results.parquet under {', '.join(runs)}")
        if model:
            df = df[df["model"] == model]
        frames.append(df)
    if not frames:
        raise HarnessError("give run directories or --store DIR (e.g. python -m harness.report --store results/store)")
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise HarnessError(f"no rows for model {model!r}; models present: "
                           f"{', '.join(sorted(pd.concat(frames)['model'].astype(str).unique()))}")
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories, results.csv/.parquet files, or folders of runs")
    ap.add_argument("--store", help="read the results store (e.g. results/store): the newest run per config")
    ap.add_argument("--model", help="only this model")
    ap.add_argument("--method", help="only store runs of this method (plus their FP reference rows)")
    ap.add_argument("--out", help="write report.md, report.html and plots/ into this directory")
    ap.add_argument("--title", default="quant-harness decision report")
    defaults = DecisionConfig()
    ap.add_argument("--max-weight-mb", type=float, default=defaults.max_weight_mb,
                    help="memory budget for the weights in MB: larger variants are never recommended")
    ap.add_argument("--runtime", default=defaults.runtime, choices=runtimes.CHOICES,
                    help=f"only variants this runtime can load as exported (default {defaults.runtime})")
    args = ap.parse_args(argv)
    cfg = DecisionConfig(max_weight_mb=args.max_weight_mb, runtime=args.runtime)
    try:
        if cfg.max_weight_mb is not None and not cfg.max_weight_mb > 0:
            raise HarnessError(f"--max-weight-mb must be > 0, got {cfg.max_weight_mb:g}")
        df = load_rows(args.runs, args.store, args.model, args.method)
        layers = results.read_layers(args.runs) if args.runs else None
        report = build(df, args.title, figures=bool(args.out), cfg=cfg, layers=layers)
        print(blocks.to_markdown(report, plots_dir=None))
        if args.out:
            blocks.write(report, Path(args.out), args.title)
            print(f"[harness.report] wrote {args.out}/report.md, report.html")
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
