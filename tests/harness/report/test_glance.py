"""The first screen: significance marks in the glance table (and the heatmap cells)."""
from harness import decide, report
from tests.harness.report.planted import planted_runs


def test_planted_difference_is_marked_in_the_glance_table_and_the_heatmap():
    f = decide.frame(planted_runs())
    dec = decide.recommend(f)
    table = report.glance_table(f, dec).set_index("variant")
    assert "perplexity: ppl_token" in table.columns and "json: schema_valid" not in table.columns  # no signal
    rtn = next(v for v in table.index if "rtn" in v)
    awq = next(v for v in table.index if "awq" in v)
    assert table.loc[rtn, "perplexity: ppl_token"].endswith(report.WORSE_MARK)
    assert report.WORSE_MARK not in table.loc[awq, "perplexity: ppl_token"]
    assert awq == f"{report.PICK_MARK} awq w4 g64"  # recommended, and loadable (no †)
    cells = report.delta_cells(f).set_index(["variant", "column"])
    assert cells.loc[("rtn w4 g128", "perplexity/prose_en"), "significant"]
    assert cells.loc[("rtn w4 g128", "perplexity/prose_en"), "text"].endswith("*")
    assert not cells.loc[("awq w4 g64", "perplexity/prose_en"), "text"].endswith("*")
    assert not cells.loc[("awq w4 g64", "json/schema"), "signal"]  # greyed in the heatmap


def test_a_variant_on_several_calibration_seeds_gets_its_mean_and_range():
    import numpy as np
    import pandas as pd

    from harness.report.glance import seed_table
    from methods.fp import FP
    from tests.harness.result_rows import ppl_row, run_rows

    fp_nll = np.random.default_rng(0).normal(2.5, 0.4, 24)
    runs = [run_rows(FP, 16, -1, [ppl_row(fp_nll, method=FP)]).assign(calib_seed=None)]
    for seed, shift in ((0, 0.02), (1, 0.06), (2, 0.04)):
        rows = run_rows("awq", 4, 64, [ppl_row(fp_nll + shift)])
        runs.append(rows.assign(calib_seed=seed, run_id=f"awq{seed}", config_hash=f"awq{seed}"))
    runs.append(run_rows("rtn", 4, 64, [ppl_row(fp_nll + 0.3)]).assign(calib_seed=None))  # reads no calibration
    f = decide.frame(pd.concat(runs, ignore_index=True))
    assert {"awq w4 g64 seed=0", "awq w4 g64 seed=1", "awq w4 g64 seed=2"} <= set(f["variant"])
    table = seed_table(f).set_index("variant")
    assert list(table.index) == ["awq w4 g64"] and "rtn w4 g64" in set(f["variant"])
    assert table.loc["awq w4 g64", "seeds"] == "0, 1, 2"
    change = [100 * (np.exp((fp_nll + s).mean()) / np.exp(fp_nll.mean()) - 1) for s in (0.02, 0.04, 0.06)]
    assert table.loc["awq w4 g64", "perplexity: ppl_token"] == (
        f"{sum(change) / 3:+.1f}% ({change[0]:+.1f}% to {change[2]:+.1f}%)")
    assert seed_table(decide.frame(pd.concat(runs[:2] + runs[-1:]))).empty  # one seed: no table
    text = report.render(pd.concat(runs, ignore_index=True))
    assert "Across calibration seeds" in text and "awq w4 g64 seed=1" in text
