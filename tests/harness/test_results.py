"""harness.results: metric direction, labels, the comparison table, formatting and run files."""
import numpy as np
import pandas as pd
import pytest

from harness import results
from methods.fp import FP
from tests.harness.result_rows import ppl_row, run_rows


@pytest.mark.parametrize("metric, lower", [("ppl_token", True), ("nll", True), ("kl_to_fp", True),
                                           ("answer_nll", True), ("out_rel_mse", True), ("pass@1", False),
                                           ("json_valid", False), ("top1_agree_fp", False)])
def test_metric_direction_is_one_rule(metric, lower):
    assert results.lower_is_better(metric) is lower


def test_variant_label_and_order():
    d = pd.DataFrame([{"method": m, "bits": b, "group_size": g} for m, b, g in
                      [("awq", 3, 64), (FP, 16, -1), ("rtn", 3, 64), ("gptq", 4, 128), ("rtn", 4, 64)]])
    d["variant"] = d.apply(results.variant_label, axis=1)
    assert list(d["variant"]) == ["awq w3 g64", FP, "rtn w3 g64", "gptq w4 g128", "rtn w4 g64"]
    assert results.variant_order(d) == [FP, "rtn w4 g64", "gptq w4 g128", "rtn w3 g64", "awq w3 g64"]


def test_comparison_orders_variants_and_keeps_suites_apart():
    nll = np.linspace(2.0, 2.4, 6)
    rows = [dict(ppl_row(nll, task="de"), method=FP), ppl_row(nll + 0.3, task="de"),
            dict(ppl_row(nll, task="de", seqlen=256), suite="multilingual")]
    df = pd.concat([run_rows(m, b, 64, rows) for m, b in [("awq", 3), ("rtn", 3), ("gptq", 4), ("rtn", 4)]])
    table = results.comparison(df)
    assert list(table.columns) == ["suite", "task", FP, "rtn w4 g64", "gptq w4 g64", "rtn w3 g64", "awq w3 g64"]
    assert sorted(table["suite"]) == ["multilingual", "perplexity"]  # same task name, two rows
    cell = table.set_index("suite").loc["perplexity", "rtn w4 g64"]
    assert cell == results.fmt_value(float(np.exp((nll + 0.3).mean())), df.iloc[1]["stderr"])


def test_comparison_names_the_calibration_when_several():
    nll = np.linspace(2.0, 2.4, 6)
    df = pd.concat([run_rows("awq", 4, 64, [ppl_row(nll)], calib=c) for c in ("prose", "code")])
    assert set(results.comparison(df).columns) == {"task", "awq w4 g64 prose", "awq w4 g64 code"}


def _awq_run(nll, run_id, started_at, **cols):
    df = run_rows("awq", 4, 64, [ppl_row(nll)])
    return df.assign(run_id=run_id, config_hash=run_id, started_at=started_at, **cols)


def test_variants_differing_in_seed_or_method_options_stay_apart(tmp_path):
    nll = np.linspace(2.0, 2.4, 6)
    df = pd.concat([_awq_run(nll, "a", "2026-01-01", calib_seed=0, method_options=""),
                    _awq_run(nll + 0.1, "b", "2026-01-02", calib_seed=0, method_options="loss=block"),
                    _awq_run(nll + 0.2, "c", "2026-01-03", calib_seed=1, method_options="")])
    expected = {"task", "awq w4 g64 seed=0", "awq w4 g64 seed=0 loss=block", "awq w4 g64 seed=1"}
    assert set(results.comparison(df).columns) == expected  # before, the newest run hid the other two
    for i, name in enumerate(("a", "b", "c")):  # through results.csv, where "" options read back as missing
        results.write(df[df.run_id == name].drop(columns=[results.SAMPLES], errors="ignore"), tmp_path / name)
        (tmp_path / name / "results.parquet").unlink()
    assert set(results.comparison(results.read_runs([tmp_path]))) == expected
    one = _awq_run(nll, "a", "2026-01-01", calib_seed=2, method_options="loss=block")
    assert set(results.comparison(one).columns) == {"task", "awq w4 g64"}  # nothing varies: no suffix


def test_rows_without_the_newer_columns_do_not_split_a_variant():
    nll = np.linspace(2.0, 2.4, 6)
    old = _awq_run(nll, "a", "2026-01-01").drop(columns=["calib_seed", "method_options"])
    new = _awq_run(nll + 0.1, "b", "2026-01-02", calib_seed=0, method_options="")
    table = results.comparison(pd.concat([old, new]))
    assert list(table.columns) == ["task", "awq w4 g64"]
    assert table.iloc[0]["awq w4 g64"].startswith(results.fmt_value(float(np.exp((nll + 0.1).mean())), None))


def test_formatting_helpers():
    assert results.fmt_value(12.345, 0.5) == "12.35 ± 0.50" and results.fmt_value(0.1234, None) == "0.123"
    assert results.fmt_value(float("nan"), None) == "—"
    assert results.intish(32.0) == 32 and results.intish("mixed") == "mixed" and results.intish(0.5) == 0.5
    md = results.markdown_table(pd.DataFrame({"a": [1], "b": ["x"]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]


def test_samples_round_trip_through_run_files(tmp_path):
    nll = np.linspace(2.0, 2.4, 5)
    df = run_rows("awq", 4, 64, [dict(ppl_row(nll), method=FP), ppl_row(nll + 0.1)])
    results.write(df, tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"results.csv", "results.parquet", "samples.parquet"}
    back = results.read_runs([tmp_path])
    assert len(back) == 2 and back["samples"].map(len).tolist() == [5, 5]
    assert np.allclose(back.iloc[1]["samples"], nll + 0.1)


def test_read_layers_finds_layers_beside_results(tmp_path):
    rows = run_rows("awq", 4, 64, [ppl_row(np.linspace(2.0, 2.4, 4))])
    for name in ("a", "b"):
        results.write(rows, tmp_path / name)
    layers = pd.DataFrame([{"method": "awq", "bits": 4, "group_size": 64, "calib": "prose", "config_hash": "h",
                            "layer": i, "weight_mse": 0.1 * i} for i in range(3)])
    layers.to_parquet(tmp_path / "a" / results.LAYERS_FILE)
    assert len(results.read_layers([tmp_path])) == 3  # b has none
    assert len(results.read_layers([tmp_path / "a" / "results.csv"])) == 3  # a results file names its run
    assert results.read_layers([tmp_path / "b"]).empty
    assert list(results.read_layers([tmp_path / "b"]).columns) == results.LAYER_KEY
