"""Per-run outputs and `python -m harness.report RUN_DIR... [--out report.md]`: one comparison table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from harness import results, store


def render(df, title: str = "quant-harness report") -> str:
    parts = [f"# {title}", ""]
    models = sorted(df["model"].dropna().unique()) if "model" in df else []
    parts.append(f"Models: {', '.join(models)}")
    notes = sorted(n for n in df.get("model_note", []).dropna().unique() if n) if "model_note" in df else []
    for n in notes:
        parts.append(f"> Note: {n}.")
    calibs = sorted(df.loc[df["method"] != "fp", "calib"].dropna().astype(str).unique())
    if calibs:
        parts.append(f"Calibration: {', '.join(calibs)}")
    table = results.comparison(df)
    if not table.empty:
        ppl = df[df["metric"] == "ppl_token"]
        seqlens = sorted(ppl["seqlen"].dropna().astype(int).unique())
        parts += ["", "## Token-level perplexity (lower is better, ± standard error over windows)", "",
                  f"Non-overlapping windows of {', '.join(map(str, seqlens))} tokens.", "",
                  results.markdown_table(table)]
        detail = ppl.drop_duplicates(subset=["task"])[["task", "windows", "tokens"]]
        parts += ["", "Windows and scored tokens per text:", "", results.markdown_table(detail)]
    timing = df[df["method"] != "fp"].drop_duplicates(subset=["run_id", "method", "bits", "group_size"])
    if not timing.empty:
        t = timing[["method", "bits", "group_size", "calib", "quant_seconds"]].copy()
        t["quant_seconds"] = t["quant_seconds"].map(lambda s: f"{float(s):.1f}")
        parts += ["", "## Quantization time", "", results.markdown_table(t)]
    return "\n".join(parts) + "\n"


def write_run_outputs(df, cfg, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    results.write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    results.write(df, out_dir)
    report = render(df, title=f"Run {out_dir.name}")
    results.write_text(out_dir / "report.md", report)
    stored = store.append(df, cfg.store_dir, cfg.method.name)  # last: its presence marks the run complete
    table = results.comparison(df)
    print()
    print(results.markdown_table(table) if not table.empty else "(no perplexity rows)")
    print(f"\n[harness] wrote {out_dir}/results.csv, results.parquet, report.md; stored {stored}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__)
    ap.add_argument("runs", nargs="+", help="run directories, results.csv/.parquet files, or folders of runs")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    args = ap.parse_args(argv)
    missing = [r for r in args.runs if not Path(r).exists()]
    if missing:
        print(f"error: no such run directory or file: {missing[0]}", file=sys.stderr)
        return 2
    df = results.read_runs(args.runs)
    if df.empty:
        print(f"error: no results.csv or results.parquet under {', '.join(args.runs)}", file=sys.stderr)
        return 2
    text = render(df)
    print(text)
    if args.out:
        results.write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
