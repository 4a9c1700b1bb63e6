"""Per-layer evidence from layers.parquet."""
import numpy as np
import pandas as pd

from harness import report, results
from methods.fp import FP
from tests.harness.result_rows import ppl_row, run_rows


def awq_layers(config_hash, n_layers=4, calib="prose"):
    """AWQ's per-layer stats: α and loss vs RTN per scale group (previous op), weight MSE."""
    rows = []
    for i in range(n_layers):
        rows.append({"method": "awq", "bits": 4, "group_size": 64, "calib": calib, "config_hash": config_hash,
                     "layer": i, "alpha[input_layernorm]": 0.2 + 0.1 * i, "alpha[post_attention_layernorm]": 0.4,
                     "loss_vs_rtn[input_layernorm]": 0.5, "loss_vs_rtn[post_attention_layernorm]": 0.7 + 0.1 * i,
                     "weight_mse": 1e-4 * (i + 1)})
    return pd.DataFrame(rows)


def rtn_layers(config_hash, n_layers=4):
    """RTN: one row per Linear; two Linears per layer."""
    return pd.DataFrame([{"method": "rtn", "bits": 4, "group_size": 64, "calib": "prose", "config_hash": config_hash,
                          "layer": i, "linear": name, "weight_mse": 2e-4 * (i + 1) * (2 if name == "up" else 1)}
                         for i in range(n_layers) for name in ("q", "up")])


def test_per_layer_summarises_families_and_averages_rows_of_a_layer():
    pl, families = report.per_layer(pd.concat([awq_layers("h1"), rtn_layers("h2")], ignore_index=True))
    assert families == ["alpha", "loss_vs_rtn", "weight_mse"]
    awq = pl[pl["variant"] == "awq w4 g64"].set_index("layer_index")
    assert list(awq.index) == [0, 1, 2, 3]
    assert np.isclose(awq.loc[1, "alpha"], (0.3 + 0.4) / 2) and np.isclose(awq.loc[3, "loss_vs_rtn"], (0.5 + 1.0) / 2)
    rtn = pl[pl["variant"] == "rtn w4 g64"].set_index("layer_index")
    assert np.isclose(rtn.loc[0, "weight_mse"], (2e-4 + 4e-4) / 2) and rtn["alpha"].isna().all()


def test_layer_blocks_table_and_figure():
    out = report.layer_blocks(awq_layers("h1"), figures=True)
    assert out[0].kind == "h2" and out[0].text == "Per-layer evidence"
    summary = next(b.table for b in out if b.kind == "table").set_index("variant")
    assert summary.loc["awq w4 g64", "layers"] == 4
    assert summary.loc["awq w4 g64", "loss_vs_rtn"].startswith("0.675 (0.6 … 0.75, max at layer 3)")
    assert any(b.kind == "figure" and b.name == "layer_stats" and len(b.png) > 1000 for b in out)
    assert report.layer_blocks(pd.DataFrame(columns=results.LAYER_KEY)) == []


def test_report_of_run_dirs_picks_up_layers_parquet(tmp_path, capsys):
    nll = np.linspace(2.0, 2.4, 6)
    rows = run_rows("awq", 4, 64, [dict(ppl_row(nll), method=FP), ppl_row(nll + 0.05)])
    run = tmp_path / "run"
    results.write(rows, run)
    awq_layers(rows["config_hash"].iloc[0]).to_parquet(run / results.LAYERS_FILE)
    other = awq_layers("not-in-these-runs")  # a layers row of no run reported here is left out
    assert report.main([str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Per-layer evidence" in md and "| awq w4 g64 | 4 |" in md
    assert (tmp_path / "rep" / "plots" / "layer_stats.png").is_file()
    assert "Per-layer evidence" in capsys.readouterr().out
    assert "Per-layer evidence" not in report.render(rows)  # without layers: no section
    assert report.layer_blocks(other[other["config_hash"].isin(rows["config_hash"])]) == []
