"""`python -m harness +experiment=calib_matrix`: how much do AWQ and GPTQ depend on what they were
calibrated on, and on how much of it?

Variants, all in one session: FP and RTN (no calibration), then every method calibrated on every
named set with ``calib.n_samples`` windows (the matrix), then every method on ``calib.name`` with
each of ``experiment.sizes`` windows (the size sweep; a variant both parts need runs once). Each is
evaluated on every eval text.
"""
from __future__ import annotations

import pandas as pd
from omegaconf import OmegaConf

import methods
from harness import blocks
from harness import calib as calib_mod
from harness.blocks import Block
from harness.errors import HarnessError
from harness.plan import Variant, method_config
from methods.fp import FP

STUDY = "calib_matrix"
SPEC_FIELDS = ("bits", "group_size", "symmetric", "quantize_lm_head")


def calibrated_methods() -> list[str]:
    return [m for m in methods.available() if methods.entry(m).calibrated]


def validate(cfg) -> None:
    exp = cfg.experiment
    if cfg.method.name != "rtn":
        raise HarnessError(f"the calib_matrix study runs experiment.methods (now {list(exp.methods)}); drop "
                           f"method={cfg.method.name} and set the format with method.bits / method.group_size")
    if not exp.methods:
        raise HarnessError(f"experiment.methods is empty; choose from: {', '.join(calibrated_methods())}")
    for m in exp.methods:
        if m not in calibrated_methods():
            raise HarnessError(f"unknown calibrated method {m!r} in experiment.methods; choose from: "
                               f"{', '.join(calibrated_methods())}")
    for s in exp.calib_sets:
        if s not in calib_mod.NAMED:
            raise HarnessError(f"unknown calibration set {s!r} in experiment.calib_sets; choose from: "
                               f"{', '.join(calib_mod.NAMED)}")
    if cfg.calib.name not in calib_mod.NAMED:
        raise HarnessError(f"the size sweep draws from a shipped set; calib={cfg.calib.name} is not one of: "
                           f"{', '.join(calib_mod.NAMED)}")
    bad = [n for n in exp.sizes if not isinstance(n, int) or n < 1]
    if bad:
        raise HarnessError(f"experiment.sizes must be positive numbers of calibration windows (got {bad[0]!r})")


def cells(cfg) -> list[dict]:
    """(method, calib set, windows, role) of every calibrated variant, duplicates merged."""
    exp = cfg.experiment
    sets = list(exp.calib_sets) or list(calib_mod.SHIPPED)
    out: dict[tuple, dict] = {}
    for s in sets:
        for m in exp.methods:
            out[(m, s, cfg.calib.n_samples)] = {"method": m, "calib": s, "samples": cfg.calib.n_samples, "role": "matrix"}
    for n in exp.sizes:
        for m in exp.methods:
            key = (m, cfg.calib.name, n)
            role = "matrix+size" if key in out else "size"
            out[key] = {"method": m, "calib": cfg.calib.name, "samples": n, "role": role}
    return list(out.values())


def plan(cfg) -> list[Variant]:
    """FP and RTN as baselines, then every cell; the study's format (bits, group size, symmetry)
    comes from ``method.*``."""
    validate(cfg)
    spec = {k: cfg.method[k] for k in SPEC_FIELDS}
    tag = {"experiment": STUDY}
    out = [Variant(method_config(FP), cfg.calib, {**tag, "calib_role": "baseline"}),
           Variant(method_config("rtn", spec), cfg.calib, {**tag, "calib_role": "baseline", "calib": "none",
                                                            "calib_samples": 0, "calib_seqlen": 0})]
    for c in cells(cfg):
        calib = OmegaConf.merge(cfg.calib, {"name": c["calib"], "n_samples": c["samples"]})
        out.append(Variant(method_config(c["method"], spec), calib, {**tag, "calib_role": c["role"]}))
    return out


# ---- report ------------------------------------------------------------------------------------
# The calibration-set × task matrix (change vs FP, with heatmaps) is the decision report's
# "Calibration matrix" section (harness.report), which covers these rows too; the study adds the
# size sweep: windows drawn from one set (rows) × eval text, with the quantization time.

def _ppl_table(d: pd.DataFrame, index_label: str, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per ``d.row`` in first-seen order, one column per eval text."""
    t = d.pivot_table(index="row", columns="task", values="value", aggfunc="last")
    t = t.reindex(list(dict.fromkeys(d["row"]))).map(lambda v: f"{v:.2f}")
    t.index.name = index_label
    t = t.reset_index()
    t.columns.name = None
    return t if extra is None else t.merge(extra, on=index_label, how="left")


def _intro(ppl: pd.DataFrame, q: pd.DataFrame) -> list[Block]:
    w = ppl.iloc[0]
    calibrated = q[q["calib_seqlen"].astype(int) > 0]
    return [blocks.h2(f"Calibration sensitivity (w{int(q['bits'].iloc[0])} g{int(q['group_size'].iloc[0])})"),
            blocks.p(f"Token perplexity, lower is better: {int(w['windows'])} windows of {int(w['seqlen'])} tokens "
                     "per eval text (standard errors in results.csv; every variant is scored on the same windows)."
                     + (f" Calibration windows of {int(calibrated['calib_seqlen'].iloc[0])} tokens."
                        if len(calibrated) else "")
                     + " The calibration set × eval text matrix (change vs FP, with heatmaps) is in the decision "
                       "report: python -m harness.report RUN_DIR --out DIR.")]


def _size_sweep(ppl: pd.DataFrame, base: pd.DataFrame, method: str) -> list[Block]:
    m = ppl[ppl["method"] == method]
    sweep = m[m["calib_role"].str.contains("size")].sort_values("calib_samples").copy()
    if sweep.empty:
        return []
    sweep["row"] = sweep["calib_samples"].astype(int).astype(str)
    secs = sweep.drop_duplicates("row")[["row", "quant_seconds"]].rename(columns={"row": "windows"})
    secs["quant s"] = secs.pop("quant_seconds").map(lambda s: f"{float(s):.1f}")
    return [blocks.h3(f"{method}: calibration windows drawn from {sweep['calib'].iloc[0]} (rows) × eval text"),
            blocks.table(_ppl_table(pd.concat([base, sweep]), "windows", secs))]


def render_sections(df: pd.DataFrame) -> list[Block]:
    d = df[df["experiment"] == STUDY]
    ppl = d[d["metric"] == "ppl_token"]
    q = ppl[ppl["method"] != FP]
    if q.empty:
        return []
    base = ppl[ppl["calib_role"] == "baseline"].copy()
    base["row"] = base["method"].map(lambda m: f"{m} (baseline)")
    out = _intro(ppl, q)
    for method in [m for m in q["method"].drop_duplicates() if m != "rtn"]:
        out += _size_sweep(ppl, base, method)
    return out
