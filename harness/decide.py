"""Which variant to ship, and why: paired bootstrap comparisons and the recommendation rules.

A *variant* is one quantized configuration (``awq w4 g64``; with the calibration set or sample
count appended when a study varies them). A *task metric* is one ``(suite, task, metric)``.

Two variants differ significantly on a task metric when the bootstrap interval of their
difference excludes 0. With per-item ``samples`` on both rows (same items, same order) the
bootstrap is paired: items are resampled together, so shared difficulty cancels. Without them it
falls back to a normal interval from the two ``stderr`` columns (independent errors; wider).
For perplexity-like metrics the samples are per-window mean NLLs and the statistic is
``exp(mean)``; otherwise the statistic is the mean itself.

Per task metric the best variant wins unless the runner-up is not significantly different; then
the smallest of the tied variants is recommended ("no significant difference"). Overall, the
smallest variant within tolerance of FP on every task metric is recommended (within tolerance:
the loss vs FP is at most ``DecisionConfig`` tolerance, or not significantly different from 0).
When no variant is, the one that is best or not significantly worse than the best on the most task
metrics is recommended (then the smaller worst loss vs FP, then the smaller size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from harness import results
from harness.config import DecisionConfig

TASK_KEY = ["suite", "task", "metric"]
STUDY_SUITES = ("salience",)  # study rows get their own figures, not a recommendation


def is_study(df: pd.DataFrame) -> pd.Series:
    return df["suite"].isin(STUDY_SUITES) | df["method"].astype(str).str.startswith(STUDY_SUITES)


def label_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``variant``; drop repeated rows of one variant and task metric (the newest run wins).
    FP rows are one variant whatever calibration their run used."""
    d = df.copy()
    d["variant"] = d.apply(results.variant_label, axis=1)
    quant = d["method"] != "fp"
    for col, fmt in (("calib", "{}"), ("calib_samples", "n={}")):
        if col in d and d.loc[quant, col].nunique() > 1:
            d.loc[quant, "variant"] += " " + d.loc[quant, col].map(lambda v: fmt.format(_intish(v)))
    if "started_at" in d:
        d = d.sort_values("started_at", kind="stable")
    return d.drop_duplicates(subset=["model", "variant"] + TASK_KEY, keep="last").reset_index(drop=True)


def _intish(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _samples(row) -> np.ndarray | None:
    s = row.get(results.SAMPLES) if hasattr(row, "get") else None
    if s is None or (isinstance(s, float) and math.isnan(s)) or len(s) == 0:
        return None
    return np.asarray(s, dtype=float)


def _statistic(metric: str, samples: np.ndarray, value: float):
    """The function of a sample mean that reproduces ``value`` (exp for perplexity), or None."""
    m = samples.mean()
    for f in ((np.exp,) if results.is_perplexity(metric) else ()) + (lambda x: x,):
        if math.isclose(float(f(m)), float(value), rel_tol=1e-6, abs_tol=1e-9):
            return f
    return None


@dataclass
class Interval:
    diff: float  # a - b in metric units
    lo: float
    hi: float
    how: str  # "paired bootstrap over N items" | "normal from stderr" | "no standard error"

    @property
    def known(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def significant(self) -> bool:
        return self.known and (self.lo > 0 or self.hi < 0)


def compare(a, b, cfg: DecisionConfig) -> Interval:
    """Interval of ``a.value - b.value`` for two rows of the same task metric."""
    metric = a["metric"]
    diff = float(a["value"]) - float(b["value"])
    sa, sb = _samples(a), _samples(b)
    if sa is not None and sb is not None and len(sa) == len(sb) and len(sa) > 1:
        fa, fb = _statistic(metric, sa, a["value"]), _statistic(metric, sb, b["value"])
        if fa is not None and fb is not None:
            rng = np.random.default_rng(cfg.seed)
            idx = rng.integers(0, len(sa), size=(cfg.n_boot, len(sa)))
            boot = fa(sa[idx].mean(axis=1)) - fb(sb[idx].mean(axis=1))
            tail = (1 - cfg.confidence) / 2 * 100
            lo, hi = np.percentile(boot, [tail, 100 - tail])
            return Interval(diff, float(lo), float(hi), f"paired bootstrap over {len(sa)} items")
    se = math.hypot(_num(a.get("stderr")), _num(b.get("stderr")))
    if math.isnan(se):
        return Interval(diff, float("nan"), float("nan"), "no standard error")
    z = NormalDist().inv_cdf(0.5 + cfg.confidence / 2)
    return Interval(diff, diff - z * se, diff + z * se, "normal interval from stderr")


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def loss_vs_fp(row, fp) -> float:
    """How much worse than FP, in the metric's natural unit: relative for perplexity-like metrics
    (0.012 = +1.2%), absolute points for scores (0.03 = 3 points of a rate lower)."""
    v, f = float(row["value"]), float(fp["value"])
    if results.lower_is_better(row["metric"]):
        return (v - f) / abs(f) if f else float("inf")
    return f - v


def describe_change(row, fp) -> str:
    loss = loss_vs_fp(row, fp)
    if results.lower_is_better(row["metric"]):
        return f"{loss * 100:+.1f}% vs FP"
    return f"{-loss:+.3f} vs FP"


def within_tolerance(row, fp, cfg: DecisionConfig) -> bool:
    tol = cfg.ppl_rel_tol if results.lower_is_better(row["metric"]) else cfg.score_abs_tol
    if loss_vs_fp(row, fp) <= tol:
        return True
    return not compare(row, fp, cfg).significant


def mb(nbytes: float) -> str:
    if nbytes is None or math.isnan(nbytes):
        return "size unknown"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e7 else f"{nbytes / 1e6:.3g} MB"


@dataclass
class TaskPick:
    suite: str
    task: str
    metric: str
    variant: str | None
    tie: bool
    why: str
    ranking: list[str] = field(default_factory=list)
    leaders: list[str] = field(default_factory=list)  # the best and those not significantly worse


def _better(metric: str, values: pd.Series) -> pd.Series:
    """Sort key: smaller is better."""
    return values if results.lower_is_better(metric) else -values


def pick_task(rows: pd.DataFrame, fp, cfg: DecisionConfig) -> TaskPick:
    """Recommendation for one task metric from its quantized rows (one per variant)."""
    first = rows.iloc[0]
    suite, task, metric = first["suite"], first["task"], first["metric"]
    rows = rows.assign(_key=_better(metric, rows["value"].astype(float))).sort_values(["_key", "weight_bytes"])
    ranked = [r for _, r in rows.iterrows()]
    best = ranked[0]
    rank_names = [r["variant"] for r in ranked]
    n = len(ranked)
    value = results.fmt_value(float(best["value"]), None)
    vs_fp = f" ({describe_change(best, fp)})" if fp is not None else ""
    if n == 1:
        return TaskPick(suite, task, metric, best["variant"], False,
                        f"{best['variant']}: {metric} {value}{vs_fp}; the only quantized variant", rank_names,
                        [best["variant"]])
    ties = [r for r in ranked[1:] if not compare(r, best, cfg).significant]
    if ties:
        group = [best] + ties
        smallest = min(group, key=lambda r: (_num(r["weight_bytes"]), _num(r.get("quant_seconds"))))
        iv = compare(ties[0], best, cfg)
        names = ", ".join(r["variant"] for r in group)
        why = (f"no significant difference between {names} (runner-up − best: {_fmt_iv(iv, cfg)}); "
               f"{smallest['variant']} is the smallest of them ({mb(_num(smallest['weight_bytes']))})")
        seconds = _num(smallest.get("quant_seconds"))
        if not math.isnan(seconds) and sum(_num(r["weight_bytes"]) == _num(smallest["weight_bytes"]) for r in group) > 1:
            why += f" and, of those that size, the quickest to quantize ({seconds:.0f} s)"
        return TaskPick(suite, task, metric, smallest["variant"], True, why, rank_names, [r["variant"] for r in group])
    iv = compare(ranked[1], best, cfg)
    why = (f"{best['variant']}: {metric} {value}{vs_fp}, best of {n}; "
           f"significantly better than {ranked[1]['variant']} (difference {_fmt_iv(iv, cfg)})")
    return TaskPick(suite, task, metric, best["variant"], False, why, rank_names, [best["variant"]])


def _fmt_iv(iv: Interval, cfg: DecisionConfig) -> str:
    if not iv.known:
        return f"{iv.diff:+.3g}, {iv.how}"
    return f"{iv.diff:+.3g}, {cfg.confidence:.0%} CI [{iv.lo:+.3g}, {iv.hi:+.3g}], {iv.how}"


@dataclass
class Decision:
    tasks: list[TaskPick]
    overall: str | None
    overall_why: str
    table: pd.DataFrame  # one row per variant: size, quant time, within-tolerance count, worst loss


def decide(df: pd.DataFrame, cfg: DecisionConfig | None = None) -> Decision:
    """Recommendations for a table of result rows of one model (study rows are ignored)."""
    cfg = cfg or DecisionConfig()
    d = label_variants(df[~is_study(df)])
    d["weight_bytes"] = d.apply(results.weight_bytes, axis=1)
    fp_rows = {tuple(r[k] for k in TASK_KEY): r for _, r in d[d["method"] == "fp"].iterrows()}
    quant = d[d["method"] != "fp"]
    picks, per_variant = [], {}
    for key, rows in quant.groupby(TASK_KEY, sort=True):
        fp = fp_rows.get(key)
        picks.append(pick_task(rows, fp, cfg))
        for _, r in rows.iterrows():
            s = per_variant.setdefault(r["variant"], {"tasks": 0, "within": 0, "worst": None, "worst_loss": -math.inf,
                                                        "bytes": r["weight_bytes"], "seconds": _num(r["quant_seconds"])})
            s["tasks"] += 1
            if fp is None:
                continue
            s["within"] += within_tolerance(r, fp, cfg)
            loss = loss_vs_fp(r, fp)
            norm = loss / (cfg.ppl_rel_tol if results.lower_is_better(r["metric"]) else cfg.score_abs_tol)
            if norm > s["worst_loss"]:
                s["worst_loss"], s["worst"] = norm, f"{describe_change(r, fp)} on {r['task']} ({r['metric']})"
    table = pd.DataFrame([{"variant": v, **s} for v, s in per_variant.items()])
    if table.empty:
        return Decision(picks, None, "no quantized variants in these results", table)
    n_keys = quant.groupby(TASK_KEY).ngroups
    fp_bytes = d.loc[d["method"] == "fp", "weight_bytes"]
    fp_size = f" vs FP {mb(fp_bytes.iloc[0])}" if len(fp_bytes) else ""
    complete = table[table["tasks"] == table["tasks"].max()]
    ok = complete[complete["within"] == complete["tasks"]]
    if not fp_rows:
        best = complete.sort_values("bytes").iloc[0]
        return Decision(picks, best["variant"], f"no FP reference rows: cannot judge quality loss; "
                        f"{best['variant']} is the smallest ({mb(best['bytes'])})", table)
    if len(ok):
        best = ok.sort_values(["bytes", "worst_loss"]).iloc[0]
        why = (f"{best['variant']}: within tolerance of FP (or not significantly worse) on all "
               f"{int(best['tasks'])} task metrics (worst: {best['worst']}); smallest size within tolerance ({mb(best['bytes'])}{fp_size}), "
               f"{len(ok)} of {len(table)} variants qualify")
        return Decision(picks, best["variant"], why, table)
    # quality alone: a pick settled by size or quantization time is no evidence that a variant is better
    top = pd.Series([v for p in picks for v in p.leaders]).value_counts()
    complete = complete.assign(top=complete["variant"].map(top).fillna(0)).sort_values(
        ["top", "worst_loss", "bytes"], ascending=[False, True, True])
    best = complete.iloc[0]
    why = (f"no variant stays within tolerance of FP on every task metric ({n_keys}); {best['variant']} "
           f"is best or not significantly worse than the best on {int(best['top'])} of them and its worst loss is {best['worst']} "
           f"({mb(best['bytes'])}{fp_size}) — consider more bits or a smaller group size")
    return Decision(picks, best["variant"], why, table)
