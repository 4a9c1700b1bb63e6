"""Shipped calibration and evaluation texts (see SOURCES.md for origin and licence)."""
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
CALIB_DIR = DATA_DIR / "calib"
EVAL_DIR = DATA_DIR / "eval"


def shipped_eval_texts() -> list[Path]:
    return sorted(p for p in EVAL_DIR.iterdir() if p.suffix == ".txt")
