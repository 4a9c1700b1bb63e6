"""The result schema (one tidy long table) and atomic writers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

COLUMNS = [
    "run_id", "started_at", "git_sha", "model", "method", "bits", "group_size", "calib", "calib_samples",
    "calib_seqlen", "suite", "task", "metric", "value", "stderr", "n", "quant_seconds", "eval_seconds",
    "config_hash", "versions",
]
# per-suite detail columns kept next to the schema (perplexity: windows, tokens, seqlen)
EXTRA_COLUMNS = ["windows", "tokens", "seqlen", "source", "model_note"]


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip()
        if out.returncode or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> str:
    import importlib.metadata as md

    out = {}
    for pkg in ("quant-harness", "torch", "transformers", "hydra-core", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return json.dumps(out, sort_keys=True)


def to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in COLUMNS + EXTRA_COLUMNS:
        if c not in df.columns:
            df[c] = None
    return df[COLUMNS + EXTRA_COLUMNS + [c for c in df.columns if c not in COLUMNS + EXTRA_COLUMNS]]


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write(df: pd.DataFrame, run_dir: Path) -> None:
    run_dir = Path(run_dir)
    _atomic(run_dir / "results.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    _atomic(run_dir / "results.csv", lambda tmp: df.to_csv(tmp, index=False))


def read_runs(paths) -> pd.DataFrame:
    """Concatenate results of runs: each path is a run directory, a results.csv, or a folder of runs."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix in (".csv", ".parquet"):
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob("results.parquet")) or sorted(p.rglob("results.csv")))
    frames = [pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def fmt_value(value: float, stderr: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    digits = 2 if abs(value) >= 10 else 3
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def variant_label(r) -> str:
    if r["method"] == "fp":
        return "fp"
    sym = ""
    return f"{r['method']} w{int(r['bits'])} g{int(r['group_size'])}{sym}"


def comparison(df: pd.DataFrame, metric: str = "ppl_token") -> pd.DataFrame:
    """One row per task, one column per model variant: 'value ± stderr'. FP first."""
    d = df[df["metric"] == metric].copy()
    if d.empty:
        return pd.DataFrame()
    d["variant"] = d.apply(variant_label, axis=1)
    if "calib" in d and d["method"].ne("fp").any():
        calibs = d.loc[d["method"] != "fp", "calib"].nunique()
        if calibs > 1:
            d.loc[d["method"] != "fp", "variant"] += " (" + d.loc[d["method"] != "fp", "calib"].astype(str) + ")"
    d = d.drop_duplicates(subset=["model", "variant", "suite", "task"], keep="last")
    d["cell"] = [fmt_value(v, s) for v, s in zip(d["value"], d["stderr"])]
    order = ["fp"] + sorted(v for v in d["variant"].unique() if v != "fp")
    index = ["model", "task"] if d["model"].nunique() > 1 else ["task"]
    table = d.pivot_table(index=index, columns="variant", values="cell", aggfunc="last")
    return table[[v for v in order if v in table.columns]].reset_index().rename_axis(columns=None)
