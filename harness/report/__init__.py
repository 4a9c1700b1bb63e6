"""Decision report: ``python -m harness.report [RUN_DIR ... | --store results/store [--model M]] --out DIR
[--max-weight-mb MB] [--runtime any|vllm|transformers]``.

Writes ``DIR/report.md`` (figures beside it in ``DIR/plots/``) and one self-contained
``DIR/report.html`` (figures embedded as base64 PNG). Per model it opens with the first screen
(:func:`at_a_glance`: the verdict sentence, variant × suite recovery with significance marks, quality
vs weight size), then the details: the recommendation (per task metric with signal; the metrics
without signal listed once), deployment (weight bytes, runtimes, constraints), fidelity statistics
and flips vs FP, perplexity, scores vs FP (heatmap), quality vs time. A report is a list of blocks
(harness.blocks: headings, paragraphs, tables, figures) rendered twice. Every section reads the
one comparison frame (harness.decide.frame); studies add their own sections
(harness.experiments.section_blocks), and further sections can be added with
``register_section(fn)``, where ``fn(frame) -> list[Block]`` returns [] when its rows are absent.
Run directories that hold ``layers.parquet`` add a per-layer evidence section.

The package, one module per part of the report (none imports another; only this one imports them):
``glance`` (the first screen), ``recommendation`` (header, picks, no-signal list, variants),
``deployment``, ``fidelity`` (quantiles and flips), ``details`` (perplexity, scores vs FP,
quality vs cost, calibration matrix, studies, runs), ``layers`` (per-layer evidence); here:
``build``, ``render``, ``load_rows``, ``register_section`` and the command line
(``__main__.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from harness import blocks, decide, experiments, results, runtimes, store
from harness.blocks import Block
from harness.config import DecisionConfig
from harness.errors import HarnessError
from harness.report import deployment, fidelity  # modules; their section functions share their names
from harness.report.details import calibration_matrix, delta_cells, deltas, perplexity, provenance, studies, tradeoffs
from harness.report.fidelity import fidelity_table, flip_table
from harness.report.glance import (BETTER_MARK, EXCLUDED_MARK, PICK_MARK, UNLOADABLE_MARK, WORSE_MARK, at_a_glance,
                                   glance_table, verdict)
from harness.report.layers import layer_blocks, layer_summary, per_layer
from harness.report.recommendation import header, recommendation

__all__ = ["BETTER_MARK", "EXCLUDED_MARK", "PICK_MARK", "SECTIONS", "UNLOADABLE_MARK", "WORSE_MARK", "at_a_glance",
           "build", "delta_cells", "fidelity_table", "flip_table", "glance_table", "layer_blocks", "layer_summary",
           "load_rows", "main", "per_layer", "register_section", "render", "verdict"]

SECTIONS: list[Callable[[pd.DataFrame], list[Block]]] = [experiments.section_blocks]


def register_section(fn: Callable[[pd.DataFrame], list[Block]]) -> Callable:
    """Add a section after the built-in ones; ``fn`` gets one model's comparison frame."""
    SECTIONS.append(fn)
    return fn


# ---------------------------------------------------------------- the report

def _decision_blocks(main: pd.DataFrame, cfg: DecisionConfig, figures: bool) -> tuple[list[Block], list[Block]]:
    """(the first screen, the details) of the quantization comparison."""
    dec = decide.recommend(main, cfg)
    details = recommendation(main, dec, cfg) + deployment.deployment(main, dec, cfg) + fidelity.fidelity(main)
    details += perplexity(main, figures) + deltas(main, figures, cfg) + tradeoffs(main, figures)
    return at_a_glance(main, dec, cfg, figures), details + calibration_matrix(main, figures)


def _model_blocks(f: pd.DataFrame, runs: int, cfg: DecisionConfig, figures: bool, layers: pd.DataFrame | None) -> list[Block]:
    main = f[~f["study"]]
    glance, details = _decision_blocks(main, cfg, figures) if not main.empty else ([], [])
    out = glance + header(f, runs) + details
    if layers is not None and not layers.empty:
        out += layer_blocks(layers[layers["config_hash"].isin(f["config_hash"])], f, figures)
    out += studies(f, figures)
    for section in SECTIONS:
        out += section(f)
    return out + provenance(f)


def build(df: pd.DataFrame, title: str = "quant-harness decision report", figures: bool = True,
          cfg: DecisionConfig | None = None, layers: pd.DataFrame | None = None) -> list[Block]:
    """The report's blocks: per model, the sections above, all read from one comparison frame.
    ``layers``: per-layer rows (results.read_layers) for the per-layer evidence section."""
    cfg = cfg or DecisionConfig()
    out = [Block("h1", title)]
    for model, rows in df.groupby("model", sort=True):
        out.append(Block("h2" if df["model"].nunique() == 1 else "h1", f"Model: {model}"))
        out += _model_blocks(decide.frame(rows, cfg), rows["config_hash"].nunique(), cfg, figures, layers)
    return out


def render(df: pd.DataFrame, title: str = "quant-harness report", layers: pd.DataFrame | None = None) -> str:
    """The Markdown report without figures (what each run directory gets)."""
    return blocks.to_markdown(build(df, title, figures=False, layers=layers), plots_dir=None)


def load_rows(runs: list[str], store_dir: str | None, model: str | None, method: str | None) -> pd.DataFrame:
    frames = []
    if store_dir:
        frames.append(store.load(store_dir, model=model, method=method))
    if runs:
        missing = [r for r in runs if not Path(r).exists()]
        if missing:
            raise HarnessError(f"no such run directory or file: {missing[0]}")
        df = results.read_runs(runs)
        if df.empty:
            raise HarnessError(f"no results.csv or results.parquet under {', '.join(runs)}")
        if model:
            df = df[df["model"] == model]
        frames.append(df)
    if not frames:
        raise HarnessError("give run directories or --store DIR (e.g. python -m harness.report --store results/store)")
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise HarnessError(f"no rows for model {model!r}; models present: "
                           f"{', '.join(sorted(pd.concat(frames)['model'].astype(str).unique()))}")
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories, results.csv/.parquet files, or folders of runs")
    ap.add_argument("--store", help="read the results store (e.g. results/store): the newest run per config")
    ap.add_argument("--model", help="only this model")
    ap.add_argument("--method", help="only store runs of this method (plus their FP reference rows)")
    ap.add_argument("--out", help="write report.md, report.html and plots/ into this directory")
    ap.add_argument("--title", default="quant-harness decision report")
    defaults = DecisionConfig()
    ap.add_argument("--max-weight-mb", type=float, default=defaults.max_weight_mb,
                    help="memory budget for the weights in MB: larger variants are never recommended")
    ap.add_argument("--runtime", default=defaults.runtime, choices=runtimes.CHOICES,
                    help=f"only variants this runtime can load as exported (default {defaults.runtime})")
    args = ap.parse_args(argv)
    cfg = DecisionConfig(max_weight_mb=args.max_weight_mb, runtime=args.runtime)
    try:
        if cfg.max_weight_mb is not None and not cfg.max_weight_mb > 0:
            raise HarnessError(f"--max-weight-mb must be > 0, got {cfg.max_weight_mb:g}")
        df = load_rows(args.runs, args.store, args.model, args.method)
        layers = results.read_layers(args.runs) if args.runs else None
        report = build(df, args.title, figures=bool(args.out), cfg=cfg, layers=layers)
        print(blocks.to_markdown(report, plots_dir=None))
        if args.out:
            blocks.write(report, Path(args.out), args.title)
            print(f"[harness.report] wrote {args.out}/report.md, report.html")
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

