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
