"""Details: the calibration matrix and the scores-vs-FP cells."""
import numpy as np
import pandas as pd

from harness import blocks, decide, report
from methods.fp import FP
from tests.harness.result_rows import ppl_row, run_rows


def calib_runs():
    rng = np.random.default_rng(2)
    fp = rng.normal(2.5, 0.3, 8)
    runs = [run_rows(FP, 16, -1, [ppl_row(fp, task=t, method=FP) for t in ("prose_en", "code_py")])]
    for calib, shift in (("prose", 0.01), ("code", 0.03)):
        runs.append(run_rows("awq", 4, 64, [ppl_row(fp + shift, task=t) for t in ("prose_en", "code_py")], calib=calib))
    return pd.concat(runs, ignore_index=True)


def test_calibration_matrix_when_a_method_has_several_calibs():
    out = report.build(calib_runs())
    md = blocks.to_markdown(out)
    assert md.count("## Calibration matrix") == 1
    table = next(b.table for b in out if b.kind == "table" and "calibration" in b.table.columns)
    assert sorted(table["calibration"]) == ["code n=32", "prose n=32"]
    prose = table.set_index("calibration").loc["prose n=32"]
    assert prose.str.startswith("+1.0").all()  # NLL +0.01 → perplexity +1.0%
    assert table.set_index("calibration").loc["code n=32"].str.startswith("+3.0").all()
    assert any(b.kind == "figure" and b.name.startswith("calib_matrix_awq") for b in out)


def test_calibration_matrix_keeps_apart_what_else_differs():
    runs = calib_runs()
    fp = runs[(runs["method"] == FP) & (runs["task"] == "prose_en")]["samples"].iloc[0]
    again = run_rows("awq", 4, 64, [ppl_row(np.array(fp) + 0.02, task=t) for t in ("prose_en", "code_py")], calib="prose")
    again = again.assign(calib_seed=1, run_id="seed1", config_hash="seed1", started_at="2026-01-02T00:00:00")
    runs = pd.concat([runs.assign(calib_seed=[None if m == FP else 0 for m in runs["method"]]), again], ignore_index=True)
    out = report.build(runs, figures=False)
    table = next(b.table for b in out if b.kind == "table" and "calibration" in b.table.columns).set_index("calibration")
    assert sorted(table.index) == ["code n=32 seed=0", "prose n=32 seed=0", "prose n=32 seed=1"]
    assert table.loc["prose n=32 seed=1"].str.startswith("+2.0").all()  # the newest run did not replace seed 0's row
    assert table.loc["prose n=32 seed=0"].str.startswith("+1.0").all()


def test_delta_cells_are_percent_of_fp_with_significance():
    f = decide.frame(calib_runs())
    cells = report.delta_cells(f[~f["study"]])
    prose = cells[cells["variant"] == "awq w4 g64 prose n=32"].set_index("column")
    # NLL +0.01 on every window: +1.0% perplexity, worse, and significant (a constant shift)
    assert np.allclose(prose["change"], 1.005, atol=0.01) and np.allclose(prose["worse"], prose["change"])
    assert prose["significant"].all() and prose["text"].str.fullmatch(r"\+1\.0%\*").all()
    assert set(cells["column"]) == {"perplexity/prose_en", "perplexity/code_py"}
