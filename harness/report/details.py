"""The detail sections after fidelity: perplexity, scores vs FP (heatmap), quality vs cost, the
calibration matrix, studies and the runs (provenance)."""
from __future__ import annotations

import math

import pandas as pd

from harness import decide, results
from harness.blocks import Block
from harness.config import DecisionConfig
from methods.fp import FP


def perplexity(main: pd.DataFrame, figures: bool) -> list[Block]:
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


def delta_cells(main: pd.DataFrame) -> pd.DataFrame:
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


def deltas(main: pd.DataFrame, figures: bool, cfg: DecisionConfig) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    scores = sorted(m for m in main["metric"].unique() if not results.is_perplexity(m))
    cells = delta_cells(main)
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


def tradeoffs(main: pd.DataFrame, figures: bool) -> list[Block]:
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


def calibration_matrix(main: pd.DataFrame, figures: bool) -> list[Block]:
    """Per method and format run on several calibration sets or sizes: the change vs FP per
    calibration (rows) and task (columns)."""
    from harness import plots  # matplotlib only when a report is built

    if not (main["method"] == FP).any():
        return []
    out = []
    for (method, bits, group), g in main[main["method"] != FP].groupby(["method", "bits", "group_size"]):
        calibration = g["calib"].astype(str) + g["calib_samples"].map(lambda n: f" n={results.intish(n)}")
        if calibration.nunique() < 2:
            continue
        # whatever else tells these variants apart (seed, method options) stays in the row's name
        g = g.assign(row=calibration + results.variant_suffixes(g, skip=("calib", "calib_samples")))
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


def studies(f: pd.DataFrame, figures: bool) -> list[Block]:
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


def provenance(f: pd.DataFrame) -> list[Block]:
    cols = [c for c in ("run_id", "variant", "calib", "calib_samples", "config_hash", "git_sha", "started_at") if c in f]
    t = f.drop_duplicates(subset=["config_hash", "variant"])[cols]
    return [Block("h2", "Runs"), Block("table", table=t.sort_values(cols[:2]))]
