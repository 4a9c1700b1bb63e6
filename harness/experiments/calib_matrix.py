"""`python -m harness +experiment=calib_matrix`: how much do AWQ and GPTQ depend on what they were
calibrated on, and on how much of it?

Variants, all on one loaded model restored between them: RTN (needs no calibration), then every
method calibrated on every named set with ``calib.n_samples`` windows (the matrix), then every
method on ``calib.name`` with each of ``experiment.sizes`` windows (the size sweep; a variant both
parts need runs once). Each is evaluated on every eval text.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

import methods
from harness import calib as calib_mod
from harness import results
from harness.cli_checks import CONF_DIR
from harness.config import SCHEMAS
from harness.errors import HarnessError
from harness.experiments.session import Session, variant_hash
from harness.run import method_spec

STUDY = "calib_matrix"
SPEC_FIELDS = ("bits", "group_size", "symmetric", "quantize_lm_head")


def calibrated_methods() -> list[str]:
    return [m for m in methods.available() if m not in ("fp", "rtn") and m in SCHEMAS["method"]]


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


def method_config(name: str, base):
    """The method's dataclass defaults plus its preset in conf/method/, with the study's format
    (bits, group size, symmetry) taken from ``method.*``."""
    path = CONF_DIR / "method" / f"{name}.yaml"
    preset = OmegaConf.load(path) if path.is_file() else OmegaConf.create()
    preset.pop("defaults", None)
    spec = {k: base[k] for k in SPEC_FIELDS}
    return OmegaConf.merge(OmegaConf.structured(SCHEMAS["method"][name]), preset, spec)


def plan(cfg) -> list[dict]:
    """(method, calib set, windows, role) for every quantized variant, RTN first, duplicates merged."""
    exp = cfg.experiment
    sets = list(exp.calib_sets) or list(calib_mod.SHIPPED)
    out: dict[tuple, dict] = {("rtn", None, None): {"method": "rtn", "calib": None, "samples": None, "role": "baseline"}}
    for s in sets:
        for m in exp.methods:
            out[(m, s, cfg.calib.n_samples)] = {"method": m, "calib": s, "samples": cfg.calib.n_samples, "role": "matrix"}
    for n in exp.sizes:
        for m in exp.methods:
            key = (m, cfg.calib.name, n)
            role = "matrix+size" if key in out else "size"
            out[key] = {"method": m, "calib": cfg.calib.name, "samples": n, "role": role}
    return list(out.values())


def run(cfg, out_dir: Path) -> pd.DataFrame:
    validate(cfg)
    session = Session.open(cfg)
    method_spec(cfg.method, session.model)
    base = {**session.common(Path(out_dir).name, STUDY), "symmetric": bool(cfg.method.symmetric)}
    fp = {"method": "fp", "bits": 16, "group_size": -1, "quant_seconds": 0.0, "calib": "none", "calib_samples": 0,
          "calib_seqlen": 0, "calib_role": "baseline", "config_hash": variant_hash(cfg, {"method": "fp"})}
    rows = [{**base, **r, **fp} for r in session.fp_rows]

    variants = plan(cfg)
    for v in tqdm(variants, desc="calib_matrix: variants", unit="variant"):
        session.restore()
        mcfg = method_config(v["method"], cfg.method)
        calib = None
        if v["calib"] is not None:
            calib = calib_mod.load(OmegaConf.merge(cfg.calib, {"name": v["calib"], "n_samples": v["samples"]}),
                                   session.tok)
        result = methods.get(v["method"]).quantize(session.model, calib, mcfg)
        print(f"[harness] {v['method']} on {v['calib'] or '-'} × {v['samples'] or 0}: {result.seconds:.1f}s, "
              f"peak RSS {result.peak_memory_mb:.0f} MB")
        variant = {"method": v["method"], "bits": mcfg.bits, "group_size": mcfg.group_size,
                   "quant_seconds": result.seconds, "calib": v["calib"] or "none",
                   "calib_samples": calib.n_samples if calib else 0, "calib_seqlen": calib.seqlen if calib else 0,
                   "calib_role": v["role"], "config_hash": variant_hash(cfg, v)}
        rows += [{**base, **r, **variant} for r in session.evaluate()]
    session.restore()
    return results.to_frame(rows)


# ---- report: blocks are ("h2" | "h3" | "p", text) or ("table", DataFrame) -----------------------

def _ppl_table(d: pd.DataFrame, index_label: str, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per ``d.row`` in first-seen order, one column per eval text."""
    t = d.pivot_table(index="row", columns="task", values="value", aggfunc="last")
    t = t.reindex(list(dict.fromkeys(d["row"]))).map(lambda v: f"{v:.2f}")
    t.index.name = index_label
    t = t.reset_index()
    t.columns.name = None
    return t if extra is None else t.merge(extra, on=index_label, how="left")


def render_sections(df: pd.DataFrame) -> list[tuple]:
    d = df[df["experiment"] == STUDY]
    ppl = d[d["metric"] == "ppl_token"]
    q = ppl[ppl["method"] != "fp"]
    if q.empty:
        return []
    w = ppl.iloc[0]
    calibrated = q[q["calib_seqlen"].astype(int) > 0]
    blocks = [("h2", f"Calibration sensitivity (w{int(q['bits'].iloc[0])} g{int(q['group_size'].iloc[0])})"),
              ("p", f"Token perplexity, lower is better: {int(w['windows'])} windows of {int(w['seqlen'])} tokens per "
                    "eval text (standard errors in results.csv; every variant is scored on the same windows)."
                    + (f" Calibration windows of {int(calibrated['calib_seqlen'].iloc[0])} tokens." if len(calibrated) else ""))]
    base = ppl[ppl["calib_role"] == "baseline"].copy()
    base["row"] = base["method"].map(lambda m: f"{m} (baseline)")
    for method in [m for m in q["method"].drop_duplicates() if m != "rtn"]:
        m = ppl[ppl["method"] == method]
        matrix = m[m["calib_role"].str.contains("matrix")].copy()
        if not matrix.empty:
            matrix["row"] = matrix["calib"]
            blocks += [("h3", f"{method}: calibration set ({int(matrix['calib_samples'].iloc[0])} windows; rows) × "
                              "eval text (columns)"),
                       ("table", _ppl_table(pd.concat([base, matrix]), "calibrated on"))]
        sweep = m[m["calib_role"].str.contains("size")].sort_values("calib_samples").copy()
        if not sweep.empty:
            sweep["row"] = sweep["calib_samples"].astype(int).astype(str)
            secs = sweep.drop_duplicates("row")[["row", "quant_seconds"]].rename(columns={"row": "windows"})
            secs["quant s"] = secs.pop("quant_seconds").map(lambda s: f"{float(s):.1f}")
            blocks += [("h3", f"{method}: calibration windows drawn from {sweep['calib'].iloc[0]} (rows) × eval text"),
                       ("table", _ppl_table(pd.concat([base, sweep]), "windows", secs))]
    return blocks
