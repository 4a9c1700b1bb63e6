"""What a run directory gets, for a plain run, a list of variants or a study alike: the config,
the results table (csv + parquet, samples beside), the per-layer evidence and the report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from harness import blocks, decide, experiments, report, results


def report_blocks(rows: pd.DataFrame, layers: pd.DataFrame, cfg, title: str) -> list[blocks.Block]:
    """A study's own sections, or the decision report of the variants."""
    if experiments.selected(cfg):
        return experiments.study_blocks(rows, title)
    return report.build(rows, title, figures=False, layers=None if layers.empty else layers)


def write(rows: pd.DataFrame, layers: pd.DataFrame, cfg, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    title = f"Study {cfg.experiment.name}: run {out_dir.name}" if experiments.selected(cfg) else f"Run {out_dir.name}"
    if not layers.empty:
        results.atomic_write(out_dir / results.LAYERS_FILE, lambda tmp: layers.to_parquet(tmp, index=False))
    written = blocks.write_run(rows, OmegaConf.to_yaml(cfg, resolve=True), out_dir,
                               report_blocks(rows, layers, cfg, title), title)
    table = results.comparison(rows)
    print()
    print(results.markdown_table(table) if not table.empty else "(no perplexity rows)")
    if not experiments.selected(cfg):
        print_decision(rows)
    names = [p.name for p in written] + ([results.LAYERS_FILE] if not layers.empty else [])
    print(f"\n[harness] wrote {', '.join(names)} and results.csv/.parquet in {out_dir}; "
          f"every variant is in the store {cfg.store_dir}")


def decision_lines(rows: pd.DataFrame) -> list[str]:
    """The decision on the console: the pick, why, and one line per candidate (report.md has the rest)."""
    if rows.empty or rows["model"].nunique() != 1:
        return []
    d = decide.decide(rows)
    if d.table.empty:
        return [f"decision: none ({d.overall_why})"] if d.overall_why else []
    lines = [f"decision: {d.overall or 'none'} — {d.overall_why}",
             "| variant | within tolerance of FP | best or tied | worst loss vs FP | size | quantization s |",
             "|---|---|---|---|---|---|"]
    for _, r in d.table.iterrows():
        lines.append(f"| {r['variant']} | {int(r['within'])} / {int(r['tasks'])} | {int(r['top'])} | {r['worst']} | "
                     f"{decide.mb(r['bytes'])} | {r['seconds']:.1f} |")
    if d.excluded:
        lines.append("excluded by constraints: " + "; ".join(f"{v} ({why})" for v, why in d.excluded.items()))
    return lines


def print_decision(rows: pd.DataFrame) -> None:
    lines = decision_lines(rows)
    if lines:
        print()
        print("\n".join(lines))
