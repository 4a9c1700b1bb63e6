import glob
from pathlib import Path

import pandas as pd

from harness import outputs

NIGHTLY = Path(__file__).resolve().parents[2] / "results" / "nightly" / "2026-11-25_19-10-21"


def _nightly_rows():
    return pd.concat(pd.read_parquet(f) for f in sorted(glob.glob(str(NIGHTLY / "*" / "results.parquet"))))


def test_the_console_gets_the_pick_and_one_line_per_candidate():
    lines = outputs.decision_lines(_nightly_rows())
    assert lines[0].startswith("decision: awq w4 g64 — ")
    rows = [ln for ln in lines if ln.startswith("| ") and "g64" in ln]
    assert {ln.split(" | ")[0][2:] for ln in rows} == {"rtn w4 g64", "rtn w3 g64", "gptq w4 g64", "gptq w3 g64",
                                                        "awq w4 g64", "awq w3 g64"}
    assert all("MB" in ln for ln in rows)


def test_fp_alone_says_there_is_nothing_to_decide():
    rows = _nightly_rows()
    assert outputs.decision_lines(rows[rows["method"] == "fp"]) == ["decision: none (no quantized variants in these results)"]
    assert outputs.decision_lines(rows.iloc[:0]) == []
