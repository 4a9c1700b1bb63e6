"""Fidelity to FP from per-item samples: KL quantiles, same-top-token rate and Δ answer NLL per
suite × variant, and the items that flip right↔wrong against FP."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness import decide, results
from harness.blocks import Block
from methods.fp import FP


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
