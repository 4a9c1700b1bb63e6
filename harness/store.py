"""The results store: every run's rows as one Parquet file under ``<store>/<model>/<method>/``.

A file is named ``<config_hash>-<started_at>.parquet`` and is written to a hidden temp file and
renamed into place, so it appears only when complete: a run killed at any point leaves either no
file or a whole one (never partial rows), and a resumed sweep redoes exactly the configs without
one. Re-running a config adds a newer file next to the old one (history over commits); ``load``
keeps only the newest file per ``config_hash`` unless asked for the history.

Rows keep their per-item ``samples`` as a list column here (the run directory's results.csv does
not), so a report built from the store can bootstrap over items.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from harness import results
from harness.errors import HarnessError
from methods.fp import FP

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _part(name) -> str:
    """A directory-safe partition name (model ids like org/name become org_name)."""
    return _UNSAFE.sub("_", str(name)).strip("._") or "unknown"


def _stamp(started_at: str) -> str:
    return re.sub(r"[^0-9T]", "", str(started_at).split("+")[0])


def run_file(store_dir, model: str, method: str, config_hash: str, started_at: str) -> Path:
    return Path(store_dir) / _part(model) / _part(method) / f"{config_hash}-{_stamp(started_at)}.parquet"


def append(df: pd.DataFrame, store_dir, method: str) -> Path:
    """Add one run's rows (all sharing one config_hash) to the store; returns the file written."""
    hashes = df["config_hash"].dropna().unique()
    if len(hashes) != 1:
        raise ValueError(f"a store file holds one run (one config_hash), got {len(hashes)}")
    first = df.iloc[0]
    path = run_file(store_dir, first["model"], method, hashes[0], first["started_at"])
    results.atomic_write(path, lambda tmp: _frame_for_parquet(df).to_parquet(tmp, index=False))
    return path


def _frame_for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    # object columns mixing None and numbers (e.g. stderr of a suite without one) must be one type
    out = df.copy()
    for c in out.columns:
        if c != "samples" and out[c].dtype == object:
            if out[c].map(lambda v: v is None or isinstance(v, (int, float))).all():
                out[c] = pd.to_numeric(out[c])
            else:
                out[c] = out[c].map(lambda v: None if v is None else str(v))
    return out


def files(store_dir, model: str | None = None, method: str | None = None) -> list[Path]:
    """Store files, optionally of one model and one method (plus the FP reference it is compared to)."""
    root = Path(store_dir)
    wanted = [None] if not method else list(dict.fromkeys([method, FP]))
    found = []
    for m in wanted:
        found += root.glob(f"{_part(model) if model else '*'}/{_part(m) if m else '*'}/[!.]*.parquet")
    return sorted(found)


def completed(store_dir, config_hash: str) -> Path | None:
    """The newest complete store file for a config, or None."""
    found = sorted(Path(store_dir).glob(f"*/*/{config_hash}-*.parquet"))
    return found[-1] if found else None


def load(store_dir, model: str | None = None, method: str | None = None, history: bool = False) -> pd.DataFrame:
    """Rows of the store (the newest run per config_hash unless ``history``)."""
    root = Path(store_dir)
    if not root.is_dir():
        raise HarnessError(f"results store not found: {store_dir}")
    paths = files(root, model, method)
    if not history:
        newest: dict[str, Path] = {}
        for p in paths:  # sorted, so the later stamp of a hash wins
            newest[p.name.rsplit("-", 1)[0]] = p
        paths = sorted(newest.values())
    if not paths:
        what = " ".join(f"{k}={v}" for k, v in (("model", model), ("method", method)) if v)
        raise HarnessError(f"no runs in the results store {store_dir}{' for ' + what if what else ''}")
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


REQUIRED = ["model", "method", "bits", "group_size", "suite", "task", "metric", "value"]


def read_any(path, what: str = "results") -> pd.DataFrame:
    """Rows from a results file, a run directory, a folder of runs, or a store directory."""
    p = Path(path)
    if not p.exists():
        raise HarnessError(f"{what} not found: {path}")
    try:
        if p.is_file():
            if p.suffix not in (".csv", ".parquet"):
                raise HarnessError(f"{what} {path} is not a .csv or .parquet results file")
            df = results.read_runs([p])
        elif any(p.rglob("results.parquet")) or any(p.rglob("results.csv")):
            df = results.read_runs([p])
        elif files(p):
            df = load(p)
        else:
            raise HarnessError(f"no results under {what} {path} (expected results.csv/.parquet or a results store)")
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise HarnessError(f"cannot read {what} {path}: {str(e).splitlines()[0][:200]}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if df.empty or missing:
        raise HarnessError(f"{what} {path} is not a results table (missing columns: {', '.join(missing) or 'all rows'})")
    return df
