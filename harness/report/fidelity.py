"""Fidelity to FP: KL quantiles, same-top-token rate and Δp of the reference token per suite × task ×
variant from the per-token statistic rows (harness/eval/fidelity.py) where a run has them; else (older
runs, suites without them) KL quantiles, same-top-token rate and Δ answer NLL per suite × variant from
per-item samples; and the items that flip right↔wrong against FP."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness import decide, results
from harness.blocks import Block
from methods.fp import FP


# the per-token statistic rows (harness/eval/fidelity.py, results.is_descriptive) → their column
TOKEN_COLUMNS = {"kl_tok_mean": "KL mean", "kl_tok_p50": "KL median", "kl_tok_p99": "KL p99",
                 "kl_tok_p999": "KL p99.9", "top1_same_tok": "same top token", "dp_ref_tok_mean": "Δp mean",
                 "dp_ref_tok_p01": "Δp p01", "dp_ref_tok_p99": "Δp p99", "dp_ref_tok_covered": "Δp covers"}
SIGNED = ("dp_ref_tok_mean", "dp_ref_tok_p01", "dp_ref_tok_p99")


def _fmt(v: float, signed: bool = False) -> str:
    return "—" if not math.isfinite(v) else (f"{v:+.3g}" if signed else f"{v:.3g}")


def _sorted(t: pd.DataFrame, main: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    order = {v: i for i, v in enumerate(results.variant_order(main))}
    return t.sort_values(keys, key=lambda c: c.map(order) if c.name == "variant" else c) if len(t) else t


def _token_row(key: tuple, g: pd.DataFrame) -> dict:
    value = dict(zip(g["metric"], g["value"].astype(float)))
    n = g.loc[g["metric"] == "kl_tok_mean", "n"]
    return {**dict(zip(("suite", "task", "variant"), key)), "tokens": results.intish(n.iloc[0]) if len(n) else "—",
            **{col: _fmt(value.get(m, math.nan), m in SIGNED) for m, col in TOKEN_COLUMNS.items()}}


def token_table(main: pd.DataFrame) -> pd.DataFrame:
    """Per suite × task × variant, from the per-token statistic rows: KL to FP (mean, median, p99,
    p99.9 over answer tokens), same-top-token rate and Δp of the reference token (mean, p01, p99,
    with the share of tokens it covers)."""
    tok = main[main["metric"].isin(list(TOKEN_COLUMNS)) & (main["method"] != FP)]
    rows = [_token_row(key, g) for key, g in tok.groupby(["suite", "task", "variant"])]
    return _sorted(pd.DataFrame(rows), main, ["suite", "task", "variant"])


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
    the per-item change of the reference answer's NLL vs FP; from per-item samples, for the suite ×
    variant pairs without per-token statistic rows (those are in :func:`token_table`)."""
    tok = main[main["metric"].isin(list(TOKEN_COLUMNS))]
    covered = set(zip(tok["suite"], tok["variant"]))
    kl = main[(main["metric"] == "kl_to_fp") & (main["method"] != FP)]
    rows = [_fidelity_row(main, suite, variant, _pooled(g)) for (suite, variant), g in kl.groupby(["suite", "variant"])
            if len(_pooled(g)) and (suite, variant) not in covered]
    return _sorted(pd.DataFrame(rows), main, ["suite", "variant"])


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


TOKEN_CAPTION = (
    "Per token, from the per-token statistic rows: over all answer tokens of a task, as llama.cpp's perplexity "
    "tool reports them — KL(FP‖quantized) on FP's top-k coarse-graining (mean, median, p99, p99.9; quantiles "
    "interpolate linearly, numpy's default), the share of tokens whose top token is FP's, and Δp, the quantized "
    "− FP probability of the reference answer token (mean, p01, p99), at the positions where that token is in "
    "FP's cached top-k ('Δp covers': their share of the tokens). Descriptive: these take no part in the "
    "recommendation, which judges the per-item KL and agreement.")
ITEM_CAPTION = (
    "Per item, from per-item samples (these rows carry no per-token statistics: runs recorded before them, or "
    "suites that do not compute them): one prompt's KL, top-token agreement and answer NLL are means over the "
    "answer's tokens, pooled over a suite's tasks; quantiles interpolate linearly (numpy's default). llama.cpp's "
    "perplexity tool reports these over tokens; here p99 and p99.9 are over items (with 20–30 items, close to the "
    "maximum), and the per-token change of the reference token's probability is not available; Δ answer NLL "
    "(quantized − FP, per item) stands in for it.")


def fidelity(main: pd.DataFrame) -> list[Block]:
    tokens, t, flipped = token_table(main), fidelity_table(main), flip_table(main)
    if tokens.empty and t.empty and flipped.empty:
        return []
    out = [Block("h2", "Fidelity to FP")]
    out += [Block("p", TOKEN_CAPTION), Block("table", table=tokens)] if len(tokens) else []
    out += [Block("p", ITEM_CAPTION), Block("table", table=t)] if len(t) else []
    if len(flipped):
        out += [Block("h3", "Flips vs FP"),
                Block("p", "Items that turn right↔wrong against FP (same items, same order): −lost (right with FP, "
                           "wrong quantized) +gained. Equal accuracy can hide many flips."),
                Block("table", table=flipped)]
    return out
