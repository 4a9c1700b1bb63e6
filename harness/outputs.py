"""What a run directory gets, for a plain run, a list of variants or a study alike: the config,
the results table (csv + parquet, samples beside), the per-layer evidence and the report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from harness import report, results


def write(rows: pd.DataFrame, layers: pd.DataFrame, cfg, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    results.write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if not layers.empty:
        results.atomic_write(out_dir / results.LAYERS_FILE, lambda tmp: layers.to_parquet(tmp, index=False))
    results.write(rows, out_dir)  # last: results.csv marks the run directory complete
    text = report.render(rows, title=f"Run {out_dir.name}")
    results.write_text(out_dir / "report.md", text)
    table = results.comparison(rows)
    print()
    print(results.markdown_table(table) if not table.empty else "(no perplexity rows)")
    print(f"\n[harness] wrote {out_dir}/results.csv, results.parquet, report.md"
          f"{', ' + results.LAYERS_FILE if not layers.empty else ''}; every variant is in {cfg.store_dir}")
