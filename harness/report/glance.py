"""At a glance (the first screen): the verdict sentence, variant × suite recovery with significance
marks, quality vs weight size, the legend, and the spread over calibration seeds when some variant
ran on several."""
from __future__ import annotations

import pandas as pd

from harness import blocks, decide, results, runtimes
from harness.blocks import Block
from harness.config import DecisionConfig
from methods.fp import FP

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


def _headline_value(rows: pd.DataFrame) -> tuple[float, str]:
    """(value, format) of one cell: recovery (quantized ÷ FP) for a score, change vs FP for a
    lower-is-better metric; mean over tasks."""
    if results.lower_is_better(rows["metric"].iloc[0]):
        return rows["loss"].mean() * 100, "{:+.1f}%"
    rec = rows["recovery"].dropna()
    return (rec.mean() * 100, "{:.0f}%") if len(rec) else (-rows["loss"].mean(), "{:+.3f}")


def _glance_cell(rows: pd.DataFrame) -> str:
    value, fmt = _headline_value(rows)
    return f"{fmt.format(value)} {_marks(rows)}".strip()


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


def seed_table(main: pd.DataFrame) -> pd.DataFrame:
    """Variants run on several calibration seeds, all else alike: each suite's headline metric (as in
    ``glance_table``) averaged over the seeds, with its lowest and highest seed."""
    judged = _judged(main)
    if "calib_seed" not in judged or judged.empty:
        return pd.DataFrame()
    judged = judged.assign(alike=results.variant_names(judged, skip=("calib_seed",)))
    heads = {suite: _headline_metric(g) for suite, g in judged.groupby("suite", sort=True)}
    order = results.variant_order(judged.assign(variant=judged["alike"]))
    rows = []
    for alike in order:
        g = judged[judged["alike"] == alike]
        seeds = sorted(g["calib_seed"].dropna().unique())
        if len(seeds) < 2:
            continue
        row = {"variant": alike, "seeds": ", ".join(str(results.intish(s)) for s in seeds)}
        for suite, metric in heads.items():
            cell = g[(g["suite"] == suite) & (g["metric"] == metric)]
            per_seed = [_headline_value(c) for _, c in cell.groupby("variant")]
            if len(per_seed) < 2:
                row[f"{suite}: {metric}"] = "—"
                continue
            values, fmt = [v for v, _ in per_seed], per_seed[0][1]
            row[f"{suite}: {metric}"] = (f"{fmt.format(sum(values) / len(values))} "
                                         f"({fmt.format(min(values))} to {fmt.format(max(values))})")
        rows.append(row)
    return pd.DataFrame(rows)


def seed_spread(main: pd.DataFrame) -> list[Block]:
    """The seed table under a heading, or nothing when no variant ran on several seeds."""
    table = seed_table(main)
    if table.empty:
        return []
    return [Block("h3", "Across calibration seeds"),
            Block("p", "The same variants calibrated on other samples of the same set (calib.seed): the mean over "
                       "the seeds of each cell above, and in brackets its lowest and highest seed. A difference "
                       "between two methods that is smaller than these ranges is not evidence for either."),
            Block("table", table=table)]


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
    keys = main[~main["metric"].map(results.is_descriptive)].groupby(decide.TASK_KEY).ngroups
    marks = (f"{WORSE_MARK}/{BETTER_MARK}: significantly worse/better than FP ({cfg.confidence:.0%} interval) on "
             f"every task, {WORSE_MARK}k/n on k of n. {PICK_MARK} recommended, {EXCLUDED_MARK} excluded by a "
             f"constraint, {UNLOADABLE_MARK} no runtime loads it as exported (see Deployment).")
    return Block("p", f"Cells: each suite's headline metric, mean over its tasks — scores as recovery "
                      f"(quantized ÷ FP), perplexity-like metrics as change vs FP (+ is worse). {marks} "
                      f"{len(dec.no_signal)} of {keys} task metrics have no signal at this size and take no part "
                      f"(listed under Recommendation). Details follow.")


def at_a_glance(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig, figures: bool) -> list[Block]:
    """The first screen: the verdict, variant × suite recovery, quality vs size, the legend, then the
    spread over calibration seeds (when some variant ran on several)."""
    table = Block("table", table=glance_table(main, dec))
    fig = _glance_figure(main, dec, cfg) if figures else None
    return [Block("p", verdict(main, dec, cfg)), blocks.row(table, fig) if fig else table, _glance_legend(main, dec, cfg),
            *seed_spread(main)]
