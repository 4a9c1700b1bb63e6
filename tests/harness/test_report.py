"""The decision report built from a fixture store: sections, figures, HTML, per-layer evidence."""
import re

import numpy as np
import pandas as pd

from harness import blocks, decide, report, results
from methods.fp import FP
from tests.harness.result_rows import fixture_store, ppl_row, run_rows, score_row  # noqa: F401  (fixture)


def test_report_sections_and_self_contained_html(fixture_store, tmp_path, capsys):
    out = tmp_path / "rep"
    assert report.main(["--store", str(fixture_store), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for heading in ("## Recommendation", "### Per task", "### Variants", "## Deployment", "## Perplexity (ppl_token",
                    "## Scores vs FP per suite", "### pass@1 (higher is better)", "## Quality vs cost",
                    "## Study: salience", "## Runs"):
        assert heading in md, heading
    assert "Per-layer evidence" not in md  # a store holds no layers.parquet
    for png in re.findall(r"\]\((plots/[^)]+\.png)\)", md):
        assert (out / png).stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "plots").glob("*.png"))) >= 5
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from outside the file
    assert "<table" in html and "Overall:" in html
    assert html.count("<script>") == 1 and '<div class="row">' in html  # sortable tables; verdict row
    assert md.split("\n\n")[2].startswith("**Ship ")  # the verdict right under the model heading
    assert "Overall:" in capsys.readouterr().out


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


def test_delta_cells_are_percent_of_fp_with_significance():
    f = decide.frame(calib_runs())
    cells = report._delta_cells(f[~f["study"]])
    prose = cells[cells["variant"] == "awq w4 g64 prose n=32"].set_index("column")
    # NLL +0.01 on every window: +1.0% perplexity, worse, and significant (a constant shift)
    assert np.allclose(prose["change"], 1.005, atol=0.01) and np.allclose(prose["worse"], prose["change"])
    assert prose["significant"].all() and prose["text"].str.fullmatch(r"\+1\.0%\*").all()
    assert set(cells["column"]) == {"perplexity/prose_en", "perplexity/code_py"}


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert report.main(["--store", str(tmp_path / "nostore")]) == 2
    assert report.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error:") for e in err)
    assert "no such run directory" in err[0] and "results store not found" in err[1] and "--store" in err[2]


# ---------------------------------------------------------------- per-layer evidence

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


# ---------------------------------------------------------------- signal, the first screen, deployment, fidelity

def planted_runs():
    """FP; AWQ with noise of mean exactly 0 around FP (not significant); RTN clearly worse; a json metric
    every variant scores 0 on (no signal); KL, agreement and answer NLL per item."""
    rng = np.random.default_rng(11)
    nll = rng.normal(2.5, 0.4, 16)
    zeros = {"suite": "json", "task": "schema", "metric": "schema_valid", "value": 0.0, "stderr": 0.0, "n": 16,
             "samples": [0.0] * 16}
    fp = [dict(ppl_row(nll), method=FP), dict(zeros, method=FP), dict(fidelity_row("answer_nll", nll / 4), method=FP)]
    noise = rng.normal(0, 0.05, 8)
    awq = [ppl_row(nll + np.concatenate([noise, -noise])), zeros, fidelity_row("kl_to_fp", rng.gamma(2, 0.02, 16)),
           fidelity_row("answer_nll", nll / 4 + 0.01), fidelity_row("top1_agree_fp", np.full(16, 0.9))]
    rtn = [ppl_row(nll + 0.25), zeros, fidelity_row("kl_to_fp", rng.gamma(2, 0.1, 16)),
           fidelity_row("answer_nll", nll / 4 + 0.2), fidelity_row("top1_agree_fp", np.full(16, 0.7))]
    return pd.concat([run_rows("awq", 4, 64, fp + awq), run_rows("rtn", 4, 128, fp + rtn, quant_seconds=1.0)],
                     ignore_index=True)


def fidelity_row(metric, values):
    v = np.asarray(values, dtype=float)
    return {"suite": "code", "task": "humaneval", "metric": metric, "value": float(v.mean()),
            "stderr": float(v.std(ddof=1) / np.sqrt(len(v))), "n": len(v), "samples": v.tolist()}


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
    cells = report._delta_cells(f).set_index(["variant", "column"])
    assert cells.loc[("rtn w4 g128", "perplexity/prose_en"), "significant"]
    assert cells.loc[("rtn w4 g128", "perplexity/prose_en"), "text"].endswith("*")
    assert not cells.loc[("awq w4 g64", "perplexity/prose_en"), "text"].endswith("*")
    assert not cells.loc[("awq w4 g64", "json/schema"), "signal"]  # greyed in the heatmap


def test_no_signal_metric_is_listed_once_and_never_recommended():
    md = blocks.to_markdown(report.build(planted_runs(), figures=False))
    per_task = md.split("### Per task")[1].split("###")[0]
    assert "schema_valid" not in per_task
    assert md.count("no signal at this size (n=16): all at 0 (the floor)") == 1
    assert "1 of" in md and "task metrics have no signal at this size" in md


def test_memory_budget_flag_removes_the_larger_variant(tmp_path, capsys):
    runs = tmp_path / "runs"
    results.write(planted_runs(), runs)
    assert report.main([str(runs), "--max-weight-mb", "0.82"]) == 0
    md = capsys.readouterr().out
    assert "exceeds the 0.82 MB budget" in md and "**Ship rtn w4 g128**" in md
    assert f"{report.EXCLUDED_MARK} awq w4 g64" in md
    assert report.main([str(runs), "--max-weight-mb", "0"]) == 2
    assert "--max-weight-mb must be > 0" in capsys.readouterr().err


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
