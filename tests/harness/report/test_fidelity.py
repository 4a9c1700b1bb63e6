"""Fidelity to FP: KL quantiles from per-item samples, and flips."""
import numpy as np
import pandas as pd

from harness import decide, report
from methods.fp import FP
from tests.harness.report.planted import planted_runs
from tests.harness.result_rows import run_rows, score_row


def test_fidelity_table_quantiles_and_flips():
    f = decide.frame(planted_runs())
    t = report.fidelity_table(f).set_index("variant")
    kl = np.asarray(f.loc[(f["variant"] == "awq w4 g64") & (f["metric"] == "kl_to_fp"), "samples"].iloc[0])
    assert t.loc["awq w4 g64", "KL p99"] == f"{np.percentile(kl, 99):.3g}" and t.loc["awq w4 g64", "items"] == 16
    assert t.loc["rtn w4 g128", "same top token"] == "0.7" and t.loc["rtn w4 g128", "Δ answer NLL median"] == "0.2"
    passed = np.array([1, 1, 0, 0, 1, 1, 0, 1], dtype=float)
    lost = passed.copy()
    lost[[0, 1]], lost[2] = 0.0, 1.0
    df = pd.concat([run_rows("awq", 4, 64, [dict(score_row(passed), method=FP), score_row(lost)])])
    flips = report.flip_table(decide.frame(df)).iloc[0]
    assert flips["awq w4 g64"] == "−2 +1" and flips["n"] == 8
