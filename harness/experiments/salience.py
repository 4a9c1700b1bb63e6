"""`python -m harness +experiment=salience`: which 0.1–3% of input channels are worth keeping in
full precision when the rest of every decoder Linear is rounded to nearest (AWQ paper, Table 1)?

Variants: RTN (nothing kept), then every selector × fraction, each on the same loaded model
restored to its original weights. Each is scored by the eval suites (perplexity) and by the mean
relative output error of the Linears on the calibration inputs (suite ``salience``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from harness import calib as calib_mod
from harness import results
from harness.errors import HarnessError
from harness.experiments.session import Session, variant_hash
from harness.run import method_spec
from methods.salience import (SalienceError, check_choice, collect_input_stats, protect_salient, toy_contributions,
                              toy_two_channel)
from methods.targets import peak_rss_mb, target_linears

STUDY = "salience"
ERROR_SUITE, ERROR_METRIC = "salience", "out_rel_mse"  # suite of the output-error rows


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


def run(cfg, out_dir: Path) -> pd.DataFrame:
    validate(cfg)
    session = Session.open(cfg)
    model, spec = session.model, method_spec(cfg.method, session.model)
    calib = calib_mod.load(cfg.calib, session.tok)
    t0 = time.perf_counter()
    stats = collect_input_stats(model, calib.input_ids)
    print(f"[harness] salience: calibration statistics of {len(stats)} Linears in {time.perf_counter() - t0:.1f}s")
    linears = target_linears(model, include_lm_head=False)
    energy: dict[str, float] = {}  # ‖XWᵀ‖² of the original weights, shared by every variant

    base = {**session.common(Path(out_dir).name, STUDY), "calib": cfg.calib.name, "calib_samples": calib.n_samples,
            "calib_seqlen": calib.seqlen, "symmetric": bool(cfg.method.symmetric)}
    fp = {"method": "fp", "bits": 16, "group_size": -1, "quant_seconds": 0.0, "keep_selector": "all",
          "keep_fraction": 1.0, "config_hash": variant_hash(cfg, {"method": "fp"})}
    rows = [{**base, **r, **fp} for r in session.fp_rows]

    variants = [(None, 0.0)] + [(s, f) for f in cfg.experiment.fractions for s in cfg.experiment.selectors]
    for selector, fraction in tqdm(variants, desc="salience: variants", unit="variant"):
        session.restore()
        t1 = time.perf_counter()
        try:
            layers = protect_salient(linears, stats, spec, selector, fraction, seed=cfg.seed, energy=energy)
        except SalienceError as e:
            raise HarnessError(str(e)) from None
        quant_seconds = time.perf_counter() - t1
        errs = [x["rel_err"] for x in layers]
        mean_err = sum(errs) / len(errs)
        se = math.sqrt(sum((e - mean_err) ** 2 for e in errs) / (len(errs) - 1) / len(errs)) if len(errs) > 1 else math.nan
        variant = {"method": label(selector, fraction), "bits": cfg.method.bits, "group_size": cfg.method.group_size,
                   "quant_seconds": quant_seconds, "keep_selector": selector or "none", "keep_fraction": fraction,
                   "kept_channels": sum(x["kept"] for x in layers),
                   "config_hash": variant_hash(cfg, {"selector": selector, "fraction": fraction})}
        rows.append({**base, **variant, "suite": ERROR_SUITE, "task": f"calib:{calib.name}", "metric": ERROR_METRIC,
                     "value": mean_err, "stderr": se, "n": len(errs)})
        rows += [{**base, **r, **variant} for r in session.evaluate()]
    session.restore()
    print(f"[harness] salience: {len(variants)} variants, peak RSS {peak_rss_mb():.0f} MB")
    return results.to_frame(rows)


# ---- report: blocks are ("h2" | "h3" | "p", text) or ("table", DataFrame) -----------------------

def _pct(f: float) -> str:
    return f"{float(f) * 100:g}%"


def _selection_table(d: pd.DataFrame) -> pd.DataFrame:
    kept = d[~d["keep_selector"].isin(["none", "all"])]
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


def toy_blocks(bits: int, symmetric: bool) -> list[tuple]:
    c0, c1 = toy_contributions()
    rows = toy_two_channel(bits, symmetric)
    table = pd.DataFrame([{"kept in FP": r["kept"], "quantized w": ", ".join(f"{v:.4f}" for v in r["w_q"]),
                           "y = w·x": f"{r['y_q']:.4f}", "|error|": f"{r['abs_err']:.4f}"} for r in rows])
    return [("h3", "Toy: two input channels"),
            ("p", f"w = (0.20, 1.20), x = (20, 0.5): channel 0 contributes {c0:.1f} to y = {c0 + c1:.1f}, "
                  f"channel 1 only {c1:.1f}. Both weights form one group, quantized to {bits} bits "
                  f"({'symmetric' if symmetric else 'asymmetric'}) by methods/quantizer.py; the kept channel is "
                  f"restored to FP afterwards."),
            ("table", table),
            ("p", "The large weight sets the group's range and lands on the grid, so keeping it changes nothing; "
                  "the small weight with the large activation carries the error.")]


def render_sections(df: pd.DataFrame) -> list[tuple]:
    d = df[df["experiment"] == STUDY]
    q = d[d["method"] != "fp"]
    if q.empty:
        return []
    bits, group = int(q["bits"].iloc[0]), int(q["group_size"].iloc[0])
    symmetric = bool(q["symmetric"].iloc[0]) if "symmetric" in q and pd.notna(q["symmetric"].iloc[0]) else False
    blocks = [("h2", f"Salient channels kept in full precision (RTN w{bits} g{group} elsewhere)"),
              ("p", "Every decoder Linear keeps the top fraction of its input channels, chosen by mean |x| on the "
                    "calibration data (activation), by the L2 norm of the weight column (weight) or at random "
                    f"(seeded); calibration: {q['calib'].iloc[0]}, {int(q['calib_samples'].iloc[0])} × "
                    f"{int(q['calib_seqlen'].iloc[0])} tokens.")]
    err = q[q["suite"] == ERROR_SUITE]
    kept = err[err["keep_selector"] != "none"]
    if not kept.empty:
        counts = kept.groupby(kept["keep_fraction"].astype(float))["kept_channels"].first()
        blocks.append(("p", f"Channels kept over all {int(kept['n'].iloc[0])} Linears: " +
                       ", ".join(f"{_pct(f)} → {int(c)}" for f, c in counts.items()) + "."))
    ppl = d[d["metric"] == "ppl_token"]
    for task in ppl["task"].drop_duplicates():
        t = ppl[ppl["task"] == task]
        w = t.iloc[0]
        blocks += [("h3", f"Token perplexity on {task} ({int(w['windows'])} windows of {int(w['seqlen'])} tokens; "
                          "lower is better)"),
                   ("p", f"FP: {_baseline(t, 'all')} · RTN, nothing kept: {_baseline(t, 'none')}"),
                   ("table", _selection_table(t))]
    if not err.empty:
        blocks += [("h3", "Relative output error of the Linears on the calibration inputs "
                          "(‖X(W−Ŵ)ᵀ‖² / ‖XWᵀ‖², mean over Linears ± s.e.; lower is better)"),
                   ("p", f"RTN, nothing kept: {_baseline(err, 'none')}"),
                   ("table", _selection_table(err))]
    return blocks + toy_blocks(bits, symmetric)
