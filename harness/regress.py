"""Nightly regression check: ``python -m harness.regress --baseline FILE... --current RUN_OR_DIR``.

Matches every metric of the baseline (model, variant, suite, task, metric) in the current results
and prints a diff table. Exit 1 when any metric degrades beyond its tolerance, 0 otherwise, 2 on
unusable input. Tolerances (defaults in harness.config.RegressConfig): perplexity-like metrics
(see results.lower_is_better) may rise by ``ppl_rel_tol`` relative; other metrics may drop by
``score_stderr_tol`` combined standard errors (sqrt(se_base² + se_current²)). With
``--min-recovery R`` a score also regresses when its recovery (current ÷ baseline, the number
llm-compressor's regression gates use) falls below R; each row reports both rules and the status is
the worse of the two.
"""
from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from harness import decide, results, store
from harness.config import RegressConfig
from harness.errors import HarnessError

KEY = ["model", "variant", "suite", "task", "metric"]


def _table(df: pd.DataFrame) -> pd.DataFrame:
    """Value and stderr per (model, variant, suite, task, metric), read from the comparison frame."""
    f = decide.frame(df)
    f = f[~f["metric"].map(results.is_descriptive)]  # quantiles and signed shifts: reported, never gated
    return f.set_index(KEY)[["value", "stderr"]].astype(float)


def _verdict(metric: str, base: float, base_se: float, cur: float, cur_se: float, cfg: RegressConfig):
    """(change text, tolerance text, status). The loss vs the baseline is decide.loss: relative for
    lower-is-better metrics, absolute for scores."""
    loss = decide.loss(metric, cur, base)
    if results.lower_is_better(metric):
        status = "REGRESSED" if loss > cfg.ppl_rel_tol else ("improved" if loss < -cfg.ppl_rel_tol else "ok")
        return f"{loss * 100:+.2f}%", f"+{cfg.ppl_rel_tol * 100:.2f}%", status
    se = math.hypot(0.0 if math.isnan(base_se) else base_se, 0.0 if math.isnan(cur_se) else cur_se)
    allowed = max(cfg.score_stderr_tol * se, 1e-9)
    status = "REGRESSED" if loss > allowed else ("improved" if -loss > allowed else "ok")
    return f"{cur - base:+.4f}", f"−{allowed:.4f} ({cfg.score_stderr_tol:g}·se)", status


def _recovery_verdict(metric: str, base: float, cur: float, min_recovery: float | None) -> tuple[str, str]:
    """(recovery text, recovery rule) for a score; ("—", "—") for lower-is-better metrics or a zero
    baseline. The rule is "—" without a threshold."""
    if results.lower_is_better(metric) or not base > 0:
        return "—", "—"
    rec = cur / base
    if min_recovery is None:
        return f"{rec:.3f}", "—"
    return f"{rec:.3f}", "REGRESSED" if rec < min_recovery else f"ok (≥ {min_recovery:g})"


def _row(key, b, c, cfg: RegressConfig, min_recovery: float | None) -> dict:
    change, tol, rule = _verdict(key[-1], b["value"], b["stderr"], c["value"], c["stderr"], cfg)
    rec, rec_rule = _recovery_verdict(key[-1], b["value"], c["value"], min_recovery)
    status = "REGRESSED" if "REGRESSED" in (rule, rec_rule) else rule
    return {**dict(zip(KEY, key)), "baseline": results.fmt_value(b["value"], None),
            "current": results.fmt_value(c["value"], None), "change": change, "tolerance": tol,
            "tolerance rule": rule, "recovery": rec, "recovery rule": rec_rule, "status": status}


COLUMNS = KEY + ["baseline", "current", "change", "tolerance", "tolerance rule", "recovery", "recovery rule", "status"]


def _dtypes(f: pd.DataFrame) -> list[str]:
    return sorted(set(f["compute_dtype"].dropna())) if "compute_dtype" in f else []


def matching_baseline(baselines: list[pd.DataFrame], current: pd.DataFrame) -> pd.DataFrame:
    """Of several baselines (one per compute dtype, as checked in), the one computed in the current
    results' dtype; the first when none is (``diff`` then refuses it with one line)."""
    return next((b for b in baselines if _dtypes(b) == _dtypes(current)), baselines[0])


def _check_same_compute_dtype(baseline: pd.DataFrame, current: pd.DataFrame) -> None:
    """bf16 and fp32 evaluation differ by more than the perplexity tolerance (README: the bf16 vs fp32
    tables), so a baseline only judges runs of its own compute dtype."""
    dtypes = [_dtypes(f) for f in (baseline, current)]
    if all(dtypes) and dtypes[0] != dtypes[1]:
        raise HarnessError(f"the baseline was computed in {', '.join(dtypes[0])} and the current results in "
                           f"{', '.join(dtypes[1])}: rerun with model.compute_dtype={dtypes[0][0]}, or save a baseline "
                           f"for {dtypes[1][0]} with --save-baseline")


def diff(baseline: pd.DataFrame, current: pd.DataFrame, cfg: RegressConfig,
         min_recovery: float | None = None) -> pd.DataFrame:
    """One row per baseline or current metric: both rules (tolerance; recovery with ``min_recovery``)."""
    _check_same_compute_dtype(baseline, current)
    base, cur = _table(baseline), _table(current)
    if not len(base.index.intersection(cur.index)):
        raise HarnessError(f"baseline and current share no metric (baseline variants: "
                           f"{', '.join(sorted(set(base.index.get_level_values('variant'))))}; current: "
                           f"{', '.join(sorted(set(cur.index.get_level_values('variant'))))})")
    rows = []
    for key, b in base.iterrows():
        if key in cur.index:
            rows.append(_row(key, b, cur.loc[key], cfg, min_recovery))
            continue
        rows.append({**dict(zip(KEY, key)), "baseline": results.fmt_value(b["value"], None),
                     "status": "MISSING" if cfg.fail_on_missing else "missing"})
    for key in cur.index.difference(base.index):
        rows.append({**dict(zip(KEY, key)), "current": results.fmt_value(cur.loc[key, "value"], None), "status": "new"})
    return pd.DataFrame(rows, columns=COLUMNS).fillna("—")


def save_baseline(df: pd.DataFrame, path) -> None:
    d = results.label_variants(df).drop(columns=[results.SAMPLES, "variant", "source"], errors="ignore")
    d = d[~d["metric"].map(results.is_descriptive)]  # what _table never gates has no place in a baseline
    d = d.sort_values(["model", "method", "bits", "group_size", "suite", "task", "metric"])
    results.write_text(path, d.to_csv(index=False))


def failed(table: pd.DataFrame) -> bool:
    return bool(table["status"].isin(["REGRESSED", "MISSING"]).any())


def main(argv=None) -> int:
    defaults = RegressConfig()
    ap = argparse.ArgumentParser(prog="python -m harness.regress", description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", nargs="+", help="baseline results (.csv/.parquet file, run dir or store); "
                    "several: the one computed in the current results' compute dtype (fp32 or bf16)")
    ap.add_argument("--current", required=True, help="current results (run dir, sweep dir, results file or store)")
    ap.add_argument("--ppl-rel-tol", type=float, default=defaults.ppl_rel_tol,
                    help=f"relative rise allowed for perplexity-like metrics (default {defaults.ppl_rel_tol})")
    ap.add_argument("--score-stderr-tol", type=float, default=defaults.score_stderr_tol,
                    help=f"drop allowed for scores, in standard errors (default {defaults.score_stderr_tol})")
    ap.add_argument("--min-recovery", type=float, default=None, metavar="R",
                    help="also fail a score whose recovery (current ÷ baseline) is below R, e.g. 0.95 (default: off)")
    ap.add_argument("--allow-missing", action="store_true", help="a baseline metric missing from current is not a failure")
    ap.add_argument("--only-failures", action="store_true", help="print only rows that are not ok")
    ap.add_argument("--save-baseline", metavar="CSV", help="write --current as a new baseline file (one row per "
                    "variant and metric, no samples) instead of comparing")
    args = ap.parse_args(argv)
    cfg = RegressConfig(ppl_rel_tol=args.ppl_rel_tol, score_stderr_tol=args.score_stderr_tol,
                        fail_on_missing=defaults.fail_on_missing and not args.allow_missing)
    try:
        if args.save_baseline:
            save_baseline(store.read_any(args.current, "current"), args.save_baseline)
            print(f"[harness.regress] wrote baseline {args.save_baseline}")
            return 0
        if not args.baseline:
            raise HarnessError("give --baseline FILE (or --save-baseline CSV to create one from --current)")
        if cfg.ppl_rel_tol < 0 or cfg.score_stderr_tol < 0:
            raise HarnessError("tolerances must be >= 0")
        if args.min_recovery is not None and not 0 < args.min_recovery <= 1:
            raise HarnessError(f"--min-recovery must be in (0, 1], got {args.min_recovery:g}")
        current = store.read_any(args.current, "current")
        baseline = matching_baseline([store.read_any(b, "baseline") for b in args.baseline], current)
        table = diff(baseline, current, cfg, args.min_recovery)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = table[table["status"] != "ok"] if args.only_failures else table
    print(results.markdown_table(shown) if not shown.empty else "(no differences beyond tolerance)")
    counts = table["status"].value_counts()
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if failed(table):
        bad = table[table["status"].isin(["REGRESSED", "MISSING"])]
        print(f"regression: {len(bad)} metric(s) beyond tolerance, e.g. {' '.join(map(str, bad.iloc[0][KEY]))}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
