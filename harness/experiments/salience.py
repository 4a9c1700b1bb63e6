"""`python -m harness +experiment=salience`: which 0.1–3% of input channels are worth keeping in
full precision when the rest of every decoder Linear is rounded to nearest (AWQ paper, Table 1)?

Variants: RTN (nothing kept), then every selector × fraction, each on the same loaded model
restored to its original weights. Each is scored by the eval suites (perplexity) and by the mean
relative output error of the Linears on the calibration inputs (suite ``salience``).
"""
from __future__ import annotations

import pandas as pd

from harness import blocks, results
from harness.blocks import Block
from harness.errors import HarnessError
from harness.plan import Variant, method_config
from methods.fp import FP
from methods.salience import (ERROR_SUITE, NO_SELECTOR, SalienceError, check_choice, toy_contributions,
                              toy_two_channel)

STUDY = "salience"
SPEC_FIELDS = ("bits", "group_size", "symmetric")


def validate(cfg) -> None:
    exp = cfg.experiment
    if cfg.method.name != "rtn":
        raise HarnessError(f"the salience study rounds to nearest around the kept channels; drop method={cfg.method.name} "
                           f"(set the format with method.bits / method.group_size)")
    if cfg.method.quantize_lm_head:
        raise HarnessError("the salience study covers the decoder Linears only; drop method.quantize_lm_head=true")
    if not exp.selectors or not exp.fractions:
        raise HarnessError("experiment.selectors and experiment.fractions must each name at least one choice")
    try:
        for selector in exp.selectors:
            for fraction in exp.fractions:
                check_choice(selector, fraction)
    except SalienceError as e:
        raise HarnessError(f"experiment: {e}") from None


def label(selector: str | None, fraction: float | None) -> str:
    # the "salience" prefix marks study rows: reports keep them out of the shipping recommendation
    return "rtn" if selector is None else f"salience_{selector}_{fraction * 100:g}%"


def variant(cfg, selector: str | None, fraction: float) -> Variant:
    fields = {**{k: cfg.method[k] for k in SPEC_FIELDS}, "selector": selector or NO_SELECTOR, "fraction": fraction,
              "seed": cfg.seed}
    columns = {"experiment": STUDY, "method": label(selector, fraction), "keep_selector": selector or NO_SELECTOR,
               "keep_fraction": fraction}
    return Variant(method_config("salience", fields), cfg.calib, columns)


def plan(cfg) -> list[Variant]:
    """FP, then RTN (nothing kept), then every selector × fraction."""
    validate(cfg)
    fp = Variant(method_config(FP), cfg.calib, {"experiment": STUDY, "keep_selector": "all", "keep_fraction": 1.0})
    kept = [variant(cfg, s, f) for f in cfg.experiment.fractions for s in cfg.experiment.selectors]
    return [fp, variant(cfg, None, 0.0), *kept]


# ---- report ------------------------------------------------------------------------------------

def _pct(f: float) -> str:
    return f"{float(f) * 100:g}%"


def _selection_table(d: pd.DataFrame) -> pd.DataFrame:
    kept = d[~d["keep_selector"].isin([NO_SELECTOR, "all"])]
    fractions = sorted(kept["keep_fraction"].astype(float).unique())
    order = [s for s in ("activation", "weight", "random") if s in set(kept["keep_selector"])]
    lines = []
    for selector in order:
        sel = kept[kept["keep_selector"] == selector]
        cells = []
        for f in fractions:
            r = sel[sel["keep_fraction"].astype(float) == f]
            cells.append(results.fmt_value(r["value"].iloc[0], r["stderr"].iloc[0]) if len(r) else "—")
        lines.append({"kept channels chosen by": selector, **dict(zip(map(_pct, fractions), cells))})
    return pd.DataFrame(lines)


def _baseline(d: pd.DataFrame, selector: str) -> str:
    r = d[d["keep_selector"] == selector]
    return results.fmt_value(r["value"].iloc[0], r["stderr"].iloc[0]) if len(r) else "—"


def toy_blocks(bits: int, symmetric: bool) -> list[Block]:
    c0, c1 = toy_contributions()
    rows = toy_two_channel(bits, symmetric)
    table = pd.DataFrame([{"kept in FP": r["kept"], "quantized w": ", ".join(f"{v:.4f}" for v in r["w_q"]),
                           "y = w·x": f"{r['y_q']:.4f}", "|error|": f"{r['abs_err']:.4f}"} for r in rows])
    return [blocks.h3("Toy: two input channels"),
            blocks.p(f"w = (0.20, 1.20), x = (20, 0.5): channel 0 contributes {c0:.1f} to y = {c0 + c1:.1f}, "
                     f"channel 1 only {c1:.1f}. Both weights form one group, quantized to {bits} bits "
                     f"({'symmetric' if symmetric else 'asymmetric'}) by methods/quantizer.py; the kept channel is "
                     f"restored to FP afterwards."),
            blocks.table(table),
            blocks.p("The large weight sets the group's range and lands on the grid, so keeping it changes nothing; "
                     "the small weight with the large activation carries the error.")]


def _intro(q: pd.DataFrame, bits: int, group: int) -> list[Block]:
    out = [blocks.h2(f"Salient channels kept in full precision (RTN w{bits} g{group} elsewhere)"),
           blocks.p("Every decoder Linear keeps the top fraction of its input channels, chosen by mean |x| on the "
                    "calibration data (activation), by the L2 norm of the weight column (weight) or at random "
                    f"(seeded); calibration: {q['calib'].iloc[0]}, {int(q['calib_samples'].iloc[0])} × "
                    f"{int(q['calib_seqlen'].iloc[0])} tokens.")]
    err = q[q["suite"] == ERROR_SUITE]
    kept = err[err["keep_selector"] != NO_SELECTOR]
    if not kept.empty:
        counts = kept.groupby(kept["keep_fraction"].astype(float))["kept_channels"].first()
        out.append(blocks.p(f"Channels kept over all {int(kept['n'].iloc[0])} Linears: " +
                            ", ".join(f"{_pct(f)} → {int(c)}" for f, c in counts.items()) + "."))
    return out


def _perplexity_tables(d: pd.DataFrame) -> list[Block]:
    ppl = d[d["metric"] == "ppl_token"]
    out = []
    for task in ppl["task"].drop_duplicates():
        t = ppl[ppl["task"] == task]
        w = t.iloc[0]
        out += [blocks.h3(f"Token perplexity on {task} ({int(w['windows'])} windows of {int(w['seqlen'])} tokens; "
                          "lower is better)"),
                blocks.p(f"FP: {_baseline(t, 'all')} · RTN, nothing kept: {_baseline(t, NO_SELECTOR)}"),
                blocks.table(_selection_table(t))]
    return out


def _error_table(q: pd.DataFrame) -> list[Block]:
    err = q[q["suite"] == ERROR_SUITE]
    if err.empty:
        return []
    return [blocks.h3("Relative output error of the Linears on the calibration inputs "
                      "(‖X(W−Ŵ)ᵀ‖² / ‖XWᵀ‖², mean over Linears ± s.e.; lower is better)"),
            blocks.p(f"RTN, nothing kept: {_baseline(err, NO_SELECTOR)}"),
            blocks.table(_selection_table(err))]


def render_sections(df: pd.DataFrame) -> list[Block]:
    d = df[df["experiment"] == STUDY]
    q = d[d["method"] != FP]
    if q.empty:
        return []
    bits, group = int(q["bits"].iloc[0]), int(q["group_size"].iloc[0])
    symmetric = bool(q["symmetric"].iloc[0]) if "symmetric" in q and pd.notna(q["symmetric"].iloc[0]) else False
    return _intro(q, bits, group) + _perplexity_tables(d) + _error_table(q) + toy_blocks(bits, symmetric)
