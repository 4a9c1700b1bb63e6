"""Which variant to ship, and why: the one comparison frame and the recommendation rules.

A *variant* is one quantized configuration (``awq w4 g64``; with the calibration set, its size,
its seed or the changed method options appended when a study varies them:
``results.label_variants``). A *task metric* is one ``(suite, task, metric)``.

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

Signal: a task metric informs a decision only when FP and the variants are not all on the floor (0)
or all on the ceiling (1 for a score) and at least two of them (FP counted) differ significantly.
Otherwise it is "no signal at this size (n=…)": listed, but out of every pick, count and vote.
Descriptive metrics (``results.is_descriptive``: the per-token fidelity statistics) are in the frame
with ``signal`` False and ``signal_why`` DESCRIPTIVE_WHY, and out of every pick, vote and that list.

Constraints (``DecisionConfig.max_weight_mb``, ``DecisionConfig.runtime``) remove candidates
before any pick: a variant over the memory budget, or one the chosen runtime cannot load as this
harness exports it (harness.runtimes), is reported as excluded and never recommended.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from statistics import NormalDist

import numpy as np
import pandas as pd

from harness import results, runtimes
from harness.config import DecisionConfig
from methods.fp import FP

TASK_KEY = ["suite", "task", "metric"]
FRAME_KEY = results.VARIANT_KEY  # one frame row per key
STUDY_SUITES = ("salience",)  # study rows get their own figures, not a recommendation
NAN = float("nan")


def is_study(df: pd.DataFrame) -> pd.Series:
    return df["suite"].isin(STUDY_SUITES) | df["method"].astype(str).str.startswith(STUDY_SUITES)


# ---------------------------------------------------------------- intervals

def _samples(row) -> np.ndarray | None:
    return _as_array(row.get(results.SAMPLES) if hasattr(row, "get") else None)


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
    if any(_num(r.get("n")) < 2 for r in (a, b)):
        # one item has no spread: a binomial 0 or 1 would claim a zero standard error
        return Interval(diff, NAN, NAN, "no standard error (one item)")
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

VS_FP_COLUMNS = ["fp_value", "loss", "loss_tol", "vs_fp", "diff", "lo", "hi", "interval", "significant", "within",
                 "recovery"]
SIGNAL_COLUMNS = ["signal", "signal_why"]


def recovery(metric: str, value: float, ref: float) -> float:
    """Quantized score ÷ FP score for higher-is-better metrics (NaN for lower-is-better ones, whose
    change vs FP is :func:`loss`, and where FP scores 0)."""
    if results.lower_is_better(metric) or not float(ref) > 0:
        return NAN
    return float(value) / float(ref)


def _vs_fp(row, fp, cfg: DecisionConfig) -> dict:
    """The frame's FP columns for one row (``fp``: the FP row of the same task metric, or None)."""
    if fp is None:
        return dict(fp_value=NAN, loss=NAN, loss_tol=NAN, vs_fp="", diff=NAN, lo=NAN, hi=NAN,
                    interval="no FP reference", significant=False, within=False, recovery=NAN)
    metric = row["metric"]
    lv = loss(metric, row["value"], fp["value"])
    reference = row["method"] == FP
    iv = Interval(0.0, 0.0, 0.0, "the reference") if reference else compare(row, fp, cfg)
    tol = tolerance(metric, cfg)
    return dict(fp_value=float(fp["value"]), loss=lv, loss_tol=_in_tolerances(lv, tol),
                vs_fp=describe_change(metric, lv), diff=iv.diff, lo=iv.lo, hi=iv.hi, interval=iv.how,
                significant=iv.significant, within=bool(lv <= tol or not iv.significant),
                recovery=recovery(metric, row["value"], fp["value"]))


def frame(df: pd.DataFrame, cfg: DecisionConfig | None = None) -> pd.DataFrame:
    """The one comparison frame: one row per model × variant × (suite, task, metric), FP included.

    Besides the result columns (and ``variant``, ``weight_bytes``, ``study``): ``fp_value``;
    ``loss`` (vs FP, natural unit, see :func:`loss`) and ``loss_tol`` (the same in tolerances);
    ``vs_fp`` (the change as text, "" without FP); ``diff``, ``lo``, ``hi``, ``interval`` (value −
    FP with its interval and how it was computed) and ``significant``; ``within`` (within
    tolerance of FP; False without an FP row); ``recovery`` (see :func:`recovery`); ``signal`` and
    ``signal_why`` (see :func:`signal`; study rows always have signal)."""
    cfg = cfg or DecisionConfig()
    d = results.label_variants(df.drop(columns=VS_FP_COLUMNS + SIGNAL_COLUMNS + ["study"], errors="ignore"))
    d["weight_bytes"] = d.apply(results.weight_bytes, axis=1)
    d["quant_seconds"] = d["quant_seconds"].map(_num) if "quant_seconds" in d else NAN
    d["study"] = is_study(d)
    ref = d[(d["method"] == FP) & ~d["study"]]
    fp = {tuple(r[k] for k in ["model"] + TASK_KEY): r for _, r in ref.iterrows()}
    cols = [_vs_fp(r, fp.get(tuple(r[k] for k in ["model"] + TASK_KEY)), cfg) for _, r in d.iterrows()]
    d = pd.concat([d, pd.DataFrame(cols, columns=VS_FP_COLUMNS, index=d.index)], axis=1)
    return _with_signal(d, cfg)


# ---------------------------------------------------------------- the signal rule

def _at_one_bound(metric: str, values: pd.Series) -> str:
    v = values.astype(float).dropna()
    if len(v) and (v == 0).all():
        return "all at 0 (the floor)"
    if len(v) and not results.lower_is_better(metric) and (v == 1).all():
        return "all at 1 (the ceiling)"
    return ""


def _some_pair_differs(rows: pd.DataFrame, cfg: DecisionConfig) -> bool:
    """Whether any two rows (FP counted) differ significantly; the widest gaps are tried first."""
    recs = [r for _, r in rows.iterrows()]
    pairs = sorted(combinations(recs, 2), key=lambda ab: -abs(_num(ab[0]["value"]) - _num(ab[1]["value"])))
    return any(compare(a, b, cfg).significant for a, b in pairs)


def signal(rows: pd.DataFrame, cfg: DecisionConfig) -> tuple[bool, str]:
    """(has signal, why not) for the frame rows of one task metric, FP included."""
    metric = rows["metric"].iloc[0]
    n = int(pd.to_numeric(rows["n"], errors="coerce").max()) if rows["n"].notna().any() else None
    size = f"no signal at this size (n={n if n is not None else '?'})"
    bound = _at_one_bound(metric, rows["value"])
    if bound:
        return False, f"{size}: {bound}"
    if len(rows) < 2 or _some_pair_differs(rows, cfg):
        return True, ""
    return False, f"{size}: no two of {'FP and ' if (rows['method'] == FP).any() else ''}the " \
                  f"{int((rows['method'] != FP).sum())} variants differ significantly"


DESCRIPTIVE_WHY = "descriptive statistic: reported, not judged"


def _with_signal(d: pd.DataFrame, cfg: DecisionConfig) -> pd.DataFrame:
    d = d.assign(signal=True, signal_why="")
    descriptive = d["metric"].map(results.is_descriptive).astype(bool) & ~d["study"]
    d.loc[descriptive, "signal"], d.loc[descriptive, "signal_why"] = False, DESCRIPTIVE_WHY
    main = d[~d["study"] & ~descriptive]
    for _, rows in main.groupby(["model"] + TASK_KEY, sort=False):
        has, why = signal(rows, cfg)
        d.loc[rows.index, "signal"], d.loc[rows.index, "signal_why"] = has, why
    return d


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


def variant_table(quant: pd.DataFrame, picks: list[TaskPick] | None = None) -> pd.DataFrame:
    """One row per quantized variant: task metrics, how many within tolerance, the worst loss vs FP
    (text and in tolerances), size, quantization seconds and ``top``: on how many task metrics it is
    the best or not significantly worse than the best (quality alone: a pick settled by size or
    quantization time is no evidence that a variant is better)."""
    q = quant.sort_values(TASK_KEY, kind="stable")
    table = pd.DataFrame([_variant_summary(q[q["variant"] == v]) for v in dict.fromkeys(q["variant"])])
    if table.empty:
        return table
    top = pd.Series([v for p in picks or [] for v in p.leaders], dtype=object).value_counts()
    return table.assign(top=table["variant"].map(top).fillna(0).astype(int))


def _fp_size(f: pd.DataFrame) -> str:
    fp_bytes = f.loc[f["method"] == FP, "weight_bytes"]
    return f" vs FP {mb(fp_bytes.iloc[0])}" if len(fp_bytes) else ""


def _smallest_within(ok: pd.DataFrame, table: pd.DataFrame, fp_size: str) -> tuple[str, str]:
    best = ok.sort_values(["bytes", "worst_loss"]).iloc[0]
    return best["variant"], (
        f"{best['variant']}: within tolerance of FP (or not significantly worse) on all "
        f"{int(best['tasks'])} task metrics with signal (worst: {best['worst']}); smallest size within tolerance "
        f"({mb(best['bytes'])}{fp_size}), {len(ok)} of {len(table)} variants qualify")


def _best_quality(complete: pd.DataFrame, n_keys: int, fp_size: str) -> tuple[str, str]:
    best = complete.sort_values(
        ["top", "worst_loss", "bytes"], ascending=[False, True, True]).iloc[0]
    return best["variant"], (
        f"no variant stays within tolerance of FP on every task metric with signal ({n_keys}); {best['variant']} "
        f"is best or not significantly worse than the best on {int(best['top'])} of them and its worst loss is "
        f"{best['worst']} ({mb(best['bytes'])}{fp_size}) — consider more bits or a smaller group size")


def overall_pick(f: pd.DataFrame, table: pd.DataFrame) -> tuple[str, str]:
    """(variant, why) over all task metrics; ``f``: the judged frame rows (no study rows),
    ``table``: :func:`variant_table` with ``top``."""
    complete = table[table["tasks"] == table["tasks"].max()]
    if not (f["method"] == FP).any():
        best = complete.sort_values("bytes").iloc[0]
        return best["variant"], (f"no FP reference rows: cannot judge quality loss; "
                                 f"{best['variant']} is the smallest ({mb(best['bytes'])})")
    ok = complete[complete["within"] == complete["tasks"]]
    if len(ok):
        return _smallest_within(ok, table, _fp_size(f))
    n_keys = f[f["method"] != FP].groupby(TASK_KEY).ngroups
    return _best_quality(complete, n_keys, _fp_size(f))


# ---------------------------------------------------------------- deployment constraints

def _variant_rows(quant: pd.DataFrame) -> dict[str, pd.Series]:
    return {v: g.iloc[0] for v, g in quant.groupby("variant", sort=False)}


def constraint_failures(quant: pd.DataFrame, cfg: DecisionConfig) -> dict[str, str]:
    """variant → why the user's constraints remove it (memory budget, runtime); absent when it meets them."""
    out = {}
    for variant, r in _variant_rows(quant).items():
        why = []
        size = _num(r["weight_bytes"])
        if cfg.max_weight_mb is not None and not size <= cfg.max_weight_mb * 1e6:
            why.append(f"{mb(size)} exceeds the {cfg.max_weight_mb:g} MB budget")
        if cfg.runtime != runtimes.ANY:
            reason = runtimes.why_not(r["method"], int(r["bits"]), int(r["group_size"]), is_symmetric(r),
                                      runtimes.check_choice(cfg.runtime))
            why += [reason] if reason else []
        if why:
            out[variant] = "; ".join(why)
    return out


def is_symmetric(row) -> bool:
    v = row.get("symmetric") if hasattr(row, "get") else None
    return False if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)


def constraints_text(cfg: DecisionConfig) -> str:
    budget = f"at most {cfg.max_weight_mb:g} MB of weights" if cfg.max_weight_mb is not None else "no memory budget"
    runtime = "any runtime" if cfg.runtime == runtimes.ANY else f"loadable by {cfg.runtime}"
    return f"{budget}, {runtime}"


# ---------------------------------------------------------------- the decision

@dataclass
class NoSignal:
    suite: str
    task: str
    metric: str
    why: str  # "no signal at this size (n=…): …"


@dataclass
class Decision:
    tasks: list[TaskPick]
    overall: str | None
    overall_why: str
    table: pd.DataFrame  # one row per candidate variant: size, quant time, within-tolerance count, worst loss
    no_signal: list[NoSignal] = field(default_factory=list)  # task metrics out of every vote
    excluded: dict[str, str] = field(default_factory=dict)  # variant → the constraint it fails


def no_signal_list(f: pd.DataFrame) -> list[NoSignal]:
    rows = f[~f["signal"]].drop_duplicates(subset=TASK_KEY).sort_values(TASK_KEY)
    return [NoSignal(r["suite"], r["task"], r["metric"], r["signal_why"]) for _, r in rows.iterrows()]


def _without_candidates(f, quant, excluded, cfg) -> str | None:
    if quant.empty:
        return "no quantized variants in these results"
    if len(excluded) == quant["variant"].nunique():
        return f"no variant meets the constraints ({constraints_text(cfg)})"
    if not f["signal"].any():
        return "no task metric has signal at this size: nothing tells the variants apart"
    return None


def recommend(f: pd.DataFrame, cfg: DecisionConfig | None = None) -> Decision:
    """The decision rules on a comparison frame (see :func:`frame`; study rows are ignored): only
    task metrics with signal and only variants that meet the constraints take part."""
    cfg = cfg or DecisionConfig()
    f = f[~f["study"] & ~f["metric"].map(results.is_descriptive).astype(bool)]
    excluded = constraint_failures(f[f["method"] != FP], cfg)
    judged = f[f["signal"] & ~f["variant"].isin(list(excluded))]
    quant = judged[judged["method"] != FP]
    picks = pick_tasks(quant, cfg)
    table = variant_table(quant, picks)
    empty = _without_candidates(f, f[f["method"] != FP], excluded, cfg)
    if empty or table.empty:
        return Decision(picks, None, empty or "no candidate has a task metric with signal", table,
                        no_signal_list(f), excluded)
    overall, why = overall_pick(judged, table)
    return Decision(picks, overall, why, table, no_signal_list(f), excluded)


def decide(df: pd.DataFrame, cfg: DecisionConfig | None = None) -> Decision:
    """Recommendations for a table of result rows of one model: build the frame, apply the rules."""
    cfg = cfg or DecisionConfig()
    return recommend(frame(df, cfg), cfg)


# ---------------------------------------------------------------- fidelity statistics and flips

QUANTILES = (("median", 50.0), ("p99", 99.0), ("p99.9", 99.9))


def distribution(values) -> dict[str, float]:
    """Mean and the quantiles llama.cpp's KL-divergence report prints (median, p99, p99.9), linear
    interpolation as numpy's default; NaN for no values."""
    v = np.asarray([x for x in np.asarray(values, dtype=float).ravel() if not math.isnan(x)])
    if not len(v):
        return {"mean": NAN, **{name: NAN for name, _ in QUANTILES}}
    return {"mean": float(v.mean()), **{name: float(np.percentile(v, q)) for name, q in QUANTILES}}


def is_binary(samples) -> bool:
    s = np.asarray(samples, dtype=float)
    return len(s) > 0 and bool(np.isin(s, (0.0, 1.0)).all())


@dataclass
class Flips:
    lost: int  # right with FP, wrong quantized
    gained: int  # wrong with FP, right quantized
    n: int

    @property
    def net(self) -> int:
        return self.gained - self.lost


def flips(fp_samples, samples) -> Flips | None:
    """Per-item right↔wrong changes against FP for a pass/fail or multiple-choice metric (same items,
    same order); None when the samples are not two equal-length 0/1 lists."""
    a, b = _as_array(fp_samples), _as_array(samples)
    if a is None or b is None or len(a) != len(b) or not (is_binary(a) and is_binary(b)):
        return None
    return Flips(lost=int(((a == 1) & (b == 0)).sum()), gained=int(((a == 0) & (b == 1)).sum()), n=len(a))


def _as_array(samples) -> np.ndarray | None:
    if samples is None or (isinstance(samples, float) and math.isnan(samples)) or len(samples) == 0:
        return None
    return np.asarray(samples, dtype=float)
