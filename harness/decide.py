"""Which variant to ship, and why: the one comparison frame and the recommendation rules.

A *variant* is one quantized configuration (``awq w4 g64``; with the calibration set or sample
count appended when a study varies them). A *task metric* is one ``(suite, task, metric)``.

:func:`frame` builds, once, one row per variant × task metric with its value, the FP value, the
loss vs FP, whether that loss is within tolerance and the interval of the difference to FP. The
report, its figures and the regression check read that frame; the rules below read it too.

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
from methods.fp import FP

TASK_KEY = ["suite", "task", "metric"]
FRAME_KEY = ["model", "variant"] + TASK_KEY  # one frame row per key
STUDY_SUITES = ("salience",)  # study rows get their own figures, not a recommendation
NAN = float("nan")


def is_study(df: pd.DataFrame) -> pd.Series:
    return df["suite"].isin(STUDY_SUITES) | df["method"].astype(str).str.startswith(STUDY_SUITES)


def label_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``variant``; drop repeated rows of one variant and task metric (the newest run wins).
    FP rows are one variant whatever calibration their run used."""
    d = df.copy()
    d["variant"] = d.apply(results.variant_label, axis=1)
    quant = d["method"] != FP
    for col, fmt in (("calib", "{}"), ("calib_samples", "n={}")):
        if col in d and d.loc[quant, col].nunique() > 1:
            d.loc[quant, "variant"] += " " + d.loc[quant, col].map(lambda v: fmt.format(results.intish(v)))
    if "started_at" in d:
        d = d.sort_values("started_at", kind="stable")
    return d.drop_duplicates(subset=FRAME_KEY, keep="last").reset_index(drop=True)


# ---------------------------------------------------------------- intervals

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


def _paired_bootstrap(a, b, cfg: DecisionConfig) -> Interval | None:
    sa, sb = _samples(a), _samples(b)
    if sa is None or sb is None or len(sa) != len(sb) or len(sa) < 2:
        return None
    fa, fb = _statistic(a["metric"], sa, a["value"]), _statistic(a["metric"], sb, b["value"])
    if fa is None or fb is None:
        return None
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, len(sa), size=(cfg.n_boot, len(sa)))
    boot = fa(sa[idx].mean(axis=1)) - fb(sb[idx].mean(axis=1))
    tail = (1 - cfg.confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    diff = float(a["value"]) - float(b["value"])
    return Interval(diff, float(lo), float(hi), f"paired bootstrap over {len(sa)} items")


def compare(a, b, cfg: DecisionConfig) -> Interval:
    """Interval of ``a.value - b.value`` for two rows of the same task metric."""
    paired = _paired_bootstrap(a, b, cfg)
    if paired is not None:
        return paired
    diff = float(a["value"]) - float(b["value"])
    se = math.hypot(_num(a.get("stderr")), _num(b.get("stderr")))
    if math.isnan(se):
        return Interval(diff, NAN, NAN, "no standard error")
    z = NormalDist().inv_cdf(0.5 + cfg.confidence / 2)
    return Interval(diff, diff - z * se, diff + z * se, "normal interval from stderr")


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return NAN


# ---------------------------------------------------------------- loss vs a reference, tolerance

def loss(metric: str, value: float, ref: float) -> float:
    """How much worse ``value`` is than ``ref``, in the metric's natural unit: relative for
    lower-is-better metrics (0.012 = +1.2%), absolute points for scores (0.03 = 3 points lower)."""
    v, f = float(value), float(ref)
    if results.lower_is_better(metric):
        return (v - f) / abs(f) if f else (0.0 if v == f else math.inf)
    return f - v


def describe_change(metric: str, loss_value: float) -> str:
    if results.lower_is_better(metric):
        return f"{loss_value * 100:+.1f}% vs FP"
    return f"{-loss_value:+.3f} vs FP"


def tolerance(metric: str, cfg: DecisionConfig) -> float:
    """The loss vs FP a variant may have on ``metric`` and still count as within tolerance."""
    return cfg.ppl_rel_tol if results.lower_is_better(metric) else cfg.score_abs_tol


def _in_tolerances(loss_value: float, tol: float) -> float:
    if tol:
        return loss_value / tol
    return 0.0 if loss_value == 0 else math.copysign(math.inf, loss_value)


# ---------------------------------------------------------------- the comparison frame

VS_FP_COLUMNS = ["fp_value", "loss", "loss_tol", "vs_fp", "diff", "lo", "hi", "interval", "significant", "within"]


def _vs_fp(row, fp, cfg: DecisionConfig) -> dict:
    """The frame's FP columns for one row (``fp``: the FP row of the same task metric, or None)."""
    if fp is None:
        return dict(fp_value=NAN, loss=NAN, loss_tol=NAN, vs_fp="", diff=NAN, lo=NAN, hi=NAN,
                    interval="no FP reference", significant=False, within=False)
    metric = row["metric"]
    lv = loss(metric, row["value"], fp["value"])
    reference = row["method"] == FP
    iv = Interval(0.0, 0.0, 0.0, "the reference") if reference else compare(row, fp, cfg)
    tol = tolerance(metric, cfg)
    return dict(fp_value=float(fp["value"]), loss=lv, loss_tol=_in_tolerances(lv, tol),
                vs_fp=describe_change(metric, lv), diff=iv.diff, lo=iv.lo, hi=iv.hi, interval=iv.how,
                significant=iv.significant, within=bool(lv <= tol or not iv.significant))


def frame(df: pd.DataFrame, cfg: DecisionConfig | None = None) -> pd.DataFrame:
    """The one comparison frame: one row per model × variant × (suite, task, metric), FP included.

    Besides the result columns (and ``variant``, ``weight_bytes``, ``study``): ``fp_value``;
    ``loss`` (vs FP, natural unit, see :func:`loss`) and ``loss_tol`` (the same in tolerances);
    ``vs_fp`` (the change as text, "" without FP); ``diff``, ``lo``, ``hi``, ``interval`` (value −
    FP with its interval and how it was computed) and ``significant``; ``within`` (within
    tolerance of FP; False without an FP row)."""
    cfg = cfg or DecisionConfig()
    d = label_variants(df.drop(columns=VS_FP_COLUMNS + ["study"], errors="ignore"))
    d["weight_bytes"] = d.apply(results.weight_bytes, axis=1)
    d["quant_seconds"] = d["quant_seconds"].map(_num) if "quant_seconds" in d else NAN
    d["study"] = is_study(d)
    ref = d[(d["method"] == FP) & ~d["study"]]
    fp = {tuple(r[k] for k in ["model"] + TASK_KEY): r for _, r in ref.iterrows()}
    cols = [_vs_fp(r, fp.get(tuple(r[k] for k in ["model"] + TASK_KEY)), cfg) for _, r in d.iterrows()]
    return pd.concat([d, pd.DataFrame(cols, columns=VS_FP_COLUMNS, index=d.index)], axis=1)


def mb(nbytes: float) -> str:
    if nbytes is None or math.isnan(nbytes):
        return "size unknown"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e7 else f"{nbytes / 1e6:.3g} MB"


# ---------------------------------------------------------------- per task metric

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


def _fmt_iv(iv: Interval, cfg: DecisionConfig) -> str:
    if not iv.known:
        return f"{iv.diff:+.3g}, {iv.how}"
    return f"{iv.diff:+.3g}, {cfg.confidence:.0%} CI [{iv.lo:+.3g}, {iv.hi:+.3g}], {iv.how}"


def _tie_why(group: list, smallest, iv: Interval, cfg: DecisionConfig) -> str:
    names = ", ".join(r["variant"] for r in group)
    why = (f"no significant difference between {names} (runner-up − best: {_fmt_iv(iv, cfg)}); "
           f"{smallest['variant']} is the smallest of them ({mb(_num(smallest['weight_bytes']))})")
    seconds = _num(smallest.get("quant_seconds"))
    if not math.isnan(seconds) and sum(_num(r["weight_bytes"]) == _num(smallest["weight_bytes"]) for r in group) > 1:
        why += f" and, of those that size, the quickest to quantize ({seconds:.0f} s)"
    return why


def pick_task(rows: pd.DataFrame, cfg: DecisionConfig) -> TaskPick:
    """Recommendation for one task metric from its quantized frame rows (one per variant)."""
    first = rows.iloc[0]
    key = (first["suite"], first["task"], first["metric"])
    metric = key[2]
    ranked = [r for _, r in rows.assign(_key=_better(metric, rows["value"].astype(float)))
              .sort_values(["_key", "weight_bytes"]).iterrows()]
    best, names = ranked[0], [r["variant"] for r in ranked]
    headline = (f"{best['variant']}: {metric} {results.fmt_value(float(best['value']), None)}"
                + (f" ({best['vs_fp']})" if best["vs_fp"] else ""))
    if len(ranked) == 1:
        return TaskPick(*key, best["variant"], False, f"{headline}; the only quantized variant", names,
                        [best["variant"]])
    ties = [r for r in ranked[1:] if not compare(r, best, cfg).significant]
    if ties:
        group = [best] + ties
        smallest = min(group, key=lambda r: (_num(r["weight_bytes"]), _num(r.get("quant_seconds"))))
        why = _tie_why(group, smallest, compare(ties[0], best, cfg), cfg)
        return TaskPick(*key, smallest["variant"], True, why, names, [r["variant"] for r in group])
    why = (f"{headline}, best of {len(ranked)}; significantly better than {ranked[1]['variant']} "
           f"(difference {_fmt_iv(compare(ranked[1], best, cfg), cfg)})")
    return TaskPick(*key, best["variant"], False, why, names, [best["variant"]])


def pick_tasks(quant: pd.DataFrame, cfg: DecisionConfig) -> list[TaskPick]:
    return [pick_task(rows, cfg) for _, rows in quant.groupby(TASK_KEY, sort=True)]


# ---------------------------------------------------------------- per variant and overall

def _variant_summary(g: pd.DataFrame) -> dict:
    judged = g[g["fp_value"].notna() & g["loss_tol"].notna()]
    worst = judged.loc[judged["loss_tol"].idxmax()] if len(judged) else None
    first = g.iloc[0]
    return {"variant": first["variant"], "tasks": len(g), "within": int((g["within"] & g["fp_value"].notna()).sum()),
            "worst": None if worst is None else f"{worst['vs_fp']} on {worst['task']} ({worst['metric']})",
            "worst_loss": -math.inf if worst is None else float(worst["loss_tol"]),
            "bytes": first["weight_bytes"], "seconds": first["quant_seconds"]}


def variant_table(quant: pd.DataFrame) -> pd.DataFrame:
    """One row per quantized variant: task metrics, how many within tolerance, the worst loss vs FP
    (text and in tolerances), size and quantization seconds."""
    q = quant.sort_values(TASK_KEY, kind="stable")
    return pd.DataFrame([_variant_summary(q[q["variant"] == v]) for v in dict.fromkeys(q["variant"])])


def _fp_size(f: pd.DataFrame) -> str:
    fp_bytes = f.loc[f["method"] == FP, "weight_bytes"]
    return f" vs FP {mb(fp_bytes.iloc[0])}" if len(fp_bytes) else ""


def _smallest_within(ok: pd.DataFrame, table: pd.DataFrame, fp_size: str) -> tuple[str, str]:
    best = ok.sort_values(["bytes", "worst_loss"]).iloc[0]
    return best["variant"], (
        f"{best['variant']}: within tolerance of FP (or not significantly worse) on all "
        f"{int(best['tasks'])} task metrics (worst: {best['worst']}); smallest size within tolerance "
        f"({mb(best['bytes'])}{fp_size}), {len(ok)} of {len(table)} variants qualify")


def _best_quality(complete: pd.DataFrame, picks: list[TaskPick], n_keys: int, fp_size: str) -> tuple[str, str]:
    # quality alone: a pick settled by size or quantization time is no evidence that a variant is better
    top = pd.Series([v for p in picks for v in p.leaders]).value_counts()
    best = complete.assign(top=complete["variant"].map(top).fillna(0)).sort_values(
        ["top", "worst_loss", "bytes"], ascending=[False, True, True]).iloc[0]
    return best["variant"], (
        f"no variant stays within tolerance of FP on every task metric ({n_keys}); {best['variant']} "
        f"is best or not significantly worse than the best on {int(best['top'])} of them and its worst loss is "
        f"{best['worst']} ({mb(best['bytes'])}{fp_size}) — consider more bits or a smaller group size")


def overall_pick(f: pd.DataFrame, table: pd.DataFrame, picks: list[TaskPick]) -> tuple[str, str]:
    """(variant, why) over all task metrics; ``f``: the frame without study rows."""
    complete = table[table["tasks"] == table["tasks"].max()]
    if not (f["method"] == FP).any():
        best = complete.sort_values("bytes").iloc[0]
        return best["variant"], (f"no FP reference rows: cannot judge quality loss; "
                                 f"{best['variant']} is the smallest ({mb(best['bytes'])})")
    ok = complete[complete["within"] == complete["tasks"]]
    if len(ok):
        return _smallest_within(ok, table, _fp_size(f))
    n_keys = f[f["method"] != FP].groupby(TASK_KEY).ngroups
    return _best_quality(complete, picks, n_keys, _fp_size(f))


@dataclass
class Decision:
    tasks: list[TaskPick]
    overall: str | None
    overall_why: str
    table: pd.DataFrame  # one row per variant: size, quant time, within-tolerance count, worst loss


def recommend(f: pd.DataFrame, cfg: DecisionConfig | None = None) -> Decision:
    """The decision rules on a comparison frame (see :func:`frame`; study rows are ignored)."""
    cfg = cfg or DecisionConfig()
    f = f[~f["study"]]
    quant = f[f["method"] != FP]
    picks = pick_tasks(quant, cfg)
    table = variant_table(quant)
    if table.empty:
        return Decision(picks, None, "no quantized variants in these results", table)
    overall, why = overall_pick(f, table, picks)
    return Decision(picks, overall, why, table)


def decide(df: pd.DataFrame, cfg: DecisionConfig | None = None) -> Decision:
    """Recommendations for a table of result rows of one model: build the frame, apply the rules."""
    cfg = cfg or DecisionConfig()
    return recommend(frame(df, cfg), cfg)
