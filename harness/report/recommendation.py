"""The recommendation section: the run header, the overall pick with the tolerance, the per-task
picks, the task metrics without signal (listed once) and the variants table."""
from __future__ import annotations

import pandas as pd

from harness import decide
from harness.blocks import Block
from harness.config import DecisionConfig
from methods.fp import FP


def header(f: pd.DataFrame, runs: int) -> list[Block]:
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


def recommendation(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig) -> list[Block]:
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
