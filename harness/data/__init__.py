"""Shipped calibration and evaluation texts (see SOURCES.md for origin and licence)."""
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
CALIB_DIR = DATA_DIR / "calib"
EVAL_DIR = DATA_DIR / "eval"


def shipped_eval_texts() -> list[Path]:
    return sorted(p for p in EVAL_DIR.iterdir() if p.suffix == ".txt")


def eval_text_path(name: str) -> Path:
    """``eval.texts`` entry → path: a shipped eval text by its name (``code_py``), otherwise the path
    (or ``hub:`` name) as given."""
    shipped = EVAL_DIR / f"{name}.txt"
    if "/" not in name and "." not in name and shipped.is_file():
        return shipped
    return Path(name).expanduser()
