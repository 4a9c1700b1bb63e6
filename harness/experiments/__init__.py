"""Studies (``+experiment=<study>``): many variants on one loaded model, run by the same session as
every other run (harness/session.py). Each study module exposes ``plan(cfg) ->
list[harness.plan.Variant]`` (its variants, rows tagged with an ``experiment`` column) and ``render_sections(df) ->
list[harness.blocks.Block]``; the decision report (harness.report) shows the same sections.
"""
from __future__ import annotations

import importlib

from harness import blocks
from harness.blocks import Block
from harness.errors import HarnessError

STUDIES = {
    "salience": "harness.experiments.salience",
    "calib_matrix": "harness.experiments.calib_matrix",
}


def get(name: str):
    if name not in STUDIES:
        raise HarnessError(f"unknown study experiment.name={name!r}; choose one of: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name])


def selected(cfg) -> bool:
    return cfg.get("experiment") is not None


def select_eval_texts(cfg) -> None:
    """``experiment.eval_texts`` names shipped texts (file stems); they become ``eval.texts``."""
    from harness.data import EVAL_DIR, shipped_eval_texts

    names = list(cfg.experiment.get("eval_texts") or [])
    if not names:
        return
    shipped = {p.stem: p for p in shipped_eval_texts()}
    unknown = [n for n in names if n not in shipped]
    if unknown:
        raise HarnessError(f"unknown eval text {unknown[0]!r} in experiment.eval_texts; shipped texts: "
                           f"{', '.join(sorted(shipped))} (in {EVAL_DIR})")
    cfg.eval.texts = [str(shipped[n]) for n in names]


def plan(cfg) -> list:
    """The study's variants (harness.plan.Variant), its eval texts selected; the session runs them."""
    study = get(cfg.experiment.name)
    select_eval_texts(cfg)
    return study.plan(cfg)


def section_blocks(df) -> list[Block]:
    """The study sections for whatever study rows ``df`` holds (none for plain runs), as blocks."""
    if "experiment" not in df.columns:
        return []
    out: list[Block] = []
    for name in df["experiment"].dropna().drop_duplicates():
        if name in STUDIES:
            out += get(name).render_sections(df)
    return out


def study_blocks(df, title: str) -> list[Block]:
    """A study's own report: title, model (and its notes), then its sections."""
    models = ", ".join(sorted(df["model"].dropna().unique()))
    notes = [f"> Note: {n}." for n in sorted(df["model_note"].dropna().unique()) if n]
    return [blocks.h1(title), blocks.p("\n".join([f"Model: {models}", *notes]))] + section_blocks(df)


def render(df, title: str) -> str:
    return blocks.to_markdown(study_blocks(df, title), plots_dir=None)
