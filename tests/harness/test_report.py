"""The decision report built from a fixture store: sections, recommendation logic, tie case."""
import math
import re

import numpy as np
import pandas as pd
import pytest

from harness import decide, report, results, store
from harness.config import DecisionConfig

PARAMS = {"params_total": 1_000_000, "params_quantized": 800_000, "symmetric": False}
N_WINDOWS = 24


def run_rows(method, bits, group, rows, calib="prose", calib_samples=32, quant_seconds=10.0):
    """One run's rows (FP reference rows included, as the harness writes them)."""
    chash = f"{method}{bits}g{group}{calib}{calib_samples}"
    common = {"run_id": chash, "started_at": "2026-01-01T00:00:00", "git_sha": "abc", "model": "tiny",
              "calib": calib, "calib_samples": calib_samples, "calib_seqlen": 256, "config_hash": chash,
              "versions": "{}", **PARAMS, "quant_groups": 800_000 // (group if group > 0 else 800_000)}
    out = []
    for r in rows:
        is_fp = r.get("method") == "fp"
        out.append({**common, "method": "fp" if is_fp else method, "bits": 16 if is_fp else bits,
                    "group_size": -1 if is_fp else group, "quant_seconds": 0.0 if is_fp else quant_seconds, **r})
    return results.to_frame(out)


def ppl_row(nll: np.ndarray, task="prose_en", **kw):
    return {"suite": "perplexity", "task": task, "metric": "ppl_token", "value": float(np.exp(nll.mean())),
            "stderr": float(np.exp(nll.mean()) * nll.std(ddof=1) / math.sqrt(len(nll))), "n": len(nll),
            "samples": nll.tolist(), "seqlen": 512, "windows": len(nll), "tokens": 511 * len(nll), **kw}


def score_row(passed: np.ndarray, task="humaneval", **kw):
    p = passed.mean()
    return {"suite": "code", "task": task, "metric": "pass@1", "value": float(p),
            "stderr": float(math.sqrt(p * (1 - p) / len(passed))), "n": len(passed), "samples": passed.tolist(), **kw}


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory):
    """FP, RTN (clearly worse), AWQ g64 and GPTQ g128 (indistinguishable from each other) on
    perplexity and code; a json suite with stderr only; a salience study."""
    rng = np.random.default_rng(0)
    fp_nll = rng.normal(2.5, 0.4, N_WINDOWS)
    awq_nll = fp_nll + 0.01 + rng.normal(0, 0.002, N_WINDOWS)
    gptq_nll = awq_nll + rng.normal(0, 0.01, N_WINDOWS)  # zero-mean noise around AWQ: a tie
    rtn_nll = fp_nll + 0.25 + rng.normal(0, 0.01, N_WINDOWS)
    fp_pass = (rng.random(40) < 0.6).astype(float)
    awq_pass = fp_pass.copy()
    rtn_pass = fp_pass.copy()
    rtn_pass[np.flatnonzero(fp_pass)[:12]] = 0.0  # RTN breaks 12 problems FP solves
    json_row = lambda v: {"suite": "json", "task": "schema", "metric": "json_valid", "value": v, "stderr": 0.02, "n": 100}  # noqa: E731
    runs = [
        run_rows("fp", 16, -1, [ppl_row(fp_nll, method="fp"), score_row(fp_pass, method="fp"),
                                {**json_row(0.95), "method": "fp"}]),
        run_rows("rtn", 4, 64, [ppl_row(rtn_nll), score_row(rtn_pass), json_row(0.80)], quant_seconds=1.0),
        run_rows("awq", 4, 64, [ppl_row(awq_nll), score_row(awq_pass), json_row(0.94)], quant_seconds=60.0),
        run_rows("gptq", 4, 128, [ppl_row(gptq_nll), score_row(awq_pass), json_row(0.93)], quant_seconds=40.0),
        run_rows("salience", 3, -1, [{"suite": "salience", "task": f"activation@{f}", "metric": "ppl_token",
                                      "value": v, "stderr": 0.1, "n": 8} for f, v in (("1%", 12.0), ("0.1%", 13.5))]),
    ]
    root = tmp_path_factory.mktemp("store")
    for df in runs:
        store.append(df, root, df[df.method != "fp"].method.iloc[0] if (df.method != "fp").any() else "fp")
    return root


def test_report_sections_and_self_contained_html(fixture_store, tmp_path, capsys):
    out = tmp_path / "rep"
    assert report.main(["--store", str(fixture_store), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for heading in ("## Recommendation", "### Per task", "### Variants", "## Perplexity (ppl_token",
                    "## Scores vs FP per suite", "### pass@1 (higher is better)", "## Quality vs cost",
                    "## Study: salience", "## Runs"):
        assert heading in md, heading
    for png in re.findall(r"\]\((plots/[^)]+\.png)\)", md):
        assert (out / png).stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "plots").glob("*.png"))) >= 5
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from outside the file
    assert "<table" in html and "Overall:" in html
    assert "Overall:" in capsys.readouterr().out


def test_recommendations_tie_and_significant(fixture_store):
    df = store.load(fixture_store)
    dec = decide.decide(df, DecisionConfig())
    picks = {(p.suite, p.metric): p for p in dec.tasks}
    ppl = picks[("perplexity", "ppl_token")]
    # AWQ and GPTQ differ by zero-mean noise: a tie, settled by size (g128 carries fewer scales)
    assert ppl.tie and "no significant difference between" in ppl.why
    assert ppl.variant == "gptq w4 g128" and "rtn" not in ppl.why.split("(")[0]
    # on pass@1 AWQ and GPTQ tie with FP and RTN lost 12 problems: also a tie, GPTQ is smaller
    assert picks[("code", "pass@1")].variant == "gptq w4 g128"
    # json has stderr only: 0.94 vs 0.93 with stderr 0.02 each cannot be told apart either
    assert picks[("json", "json_valid")].tie
    # overall: the smallest variant within tolerance everywhere; RTN is not within tolerance
    assert dec.overall == "gptq w4 g128"
    assert "within tolerance" in dec.overall_why and "smallest size within tolerance" in dec.overall_why
    row = dec.table.set_index("variant")
    assert row.loc["rtn w4 g64", "within"] < row.loc["rtn w4 g64", "tasks"]
    assert row.loc["gptq w4 g128", "bytes"] < row.loc["awq w4 g64", "bytes"] == row.loc["rtn w4 g64", "bytes"]


def test_significant_winner_is_explained(fixture_store):
    df = store.load(fixture_store)
    df = df[df.method.isin(["fp", "rtn", "awq"])]
    pick = next(p for p in decide.decide(df).tasks if p.metric == "ppl_token")
    assert not pick.tie and pick.variant == "awq w4 g64"
    assert "best of 2" in pick.why and "significantly better than rtn w4 g64" in pick.why
    assert re.search(r"\+1\.\d% vs FP", pick.why)  # NLL +0.01 per token is +1.0% perplexity


def test_pairing_detects_what_stderr_cannot():
    """A constant per-item shift hidden under a large item-to-item spread: the paired bootstrap
    sees it, independent stderr intervals do not."""
    rng = np.random.default_rng(1)
    base = rng.normal(2.0, 1.0, 50)
    a = pd.Series(ppl_row(base + 0.02))
    b = pd.Series(ppl_row(base))
    cfg = DecisionConfig()
    paired = decide.compare(a, b, cfg)
    unpaired = decide.compare(a.drop("samples"), b.drop("samples"), cfg)
    assert paired.significant and paired.lo > 0 and "paired bootstrap over 50 items" in paired.how
    assert not unpaired.significant and "stderr" in unpaired.how
    assert decide.compare(a, b, cfg).lo == paired.lo  # seeded: the same interval every time
    assert math.isclose(paired.diff, a["value"] - b["value"])


def test_calibration_matrix_when_a_method_has_several_calibs(tmp_path):
    rng = np.random.default_rng(2)
    fp = rng.normal(2.5, 0.3, 8)
    runs = [run_rows("fp", 16, -1, [ppl_row(fp, task=t, method="fp") for t in ("prose_en", "code_py")])]
    for calib, shift in (("prose", 0.01), ("code", 0.03)):
        runs.append(run_rows("awq", 4, 64, [ppl_row(fp + shift, task=t) for t in ("prose_en", "code_py")], calib=calib))
    blocks = report.build(pd.concat(runs, ignore_index=True))
    md = report.to_markdown(blocks)
    assert "## Calibration matrix" in md
    table = next(b.table for b in blocks if b.kind == "table" and "calibration" in b.table.columns)
    assert sorted(table["calibration"]) == ["code n=32", "prose n=32"]
    prose = table.set_index("calibration").loc["prose n=32"]
    assert prose.str.startswith("+1.0").all()  # NLL +0.01 → perplexity +1.0%
    assert any(b.kind == "figure" and b.name.startswith("calib_matrix_awq") for b in blocks)


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert report.main(["--store", str(tmp_path / "nostore")]) == 2
    assert report.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error:") for e in err)
    assert "no such run directory" in err[0] and "results store not found" in err[1] and "--store" in err[2]


def test_comparison_orders_variants_and_keeps_suites_apart():
    nll = np.linspace(2.0, 2.4, 6)
    rows = [dict(ppl_row(nll, task="de"), method="fp"), ppl_row(nll + 0.3, task="de"),
            dict(ppl_row(nll, task="de", seqlen=256), suite="multilingual")]
    df = pd.concat([run_rows(m, b, 64, rows) for m, b in [("awq", 3), ("rtn", 3), ("gptq", 4), ("rtn", 4)]])
    table = results.comparison(df)
    assert list(table.columns) == ["suite", "task", "fp", "rtn w4 g64", "gptq w4 g64", "rtn w3 g64", "awq w3 g64"]
    assert sorted(table["suite"]) == ["multilingual", "perplexity"]  # same task name, two rows


def test_a_tie_between_equal_sizes_goes_to_the_quicker_method():
    nll = np.linspace(2.0, 2.4, 8)
    rows = [dict(ppl_row(nll), method="fp"), ppl_row(nll + 0.1)]
    df = pd.concat([run_rows("awq", 4, 64, rows, quant_seconds=100.0),
                    run_rows("gptq", 4, 64, rows, quant_seconds=90.0)])
    pick = decide.decide(df).tasks[0]
    assert pick.tie and pick.variant == "gptq w4 g64"
    assert "of those that size, the quickest to quantize (90 s)" in pick.why


def test_without_a_variant_within_tolerance_quality_decides_not_tie_breaks():
    # gptq is as good as awq on texts a and c and clearly worse on b; both far from FP. The
    # quantization-time tie-break hands gptq a and c, but awq is at the top on all three texts.
    nll = np.linspace(2.0, 2.4, 8)
    texts = ("a", "b", "c")
    fp = [dict(ppl_row(nll, task=t), method="fp") for t in texts]
    awq = run_rows("awq", 4, 64, fp + [ppl_row(nll + 0.5, task=t) for t in texts], quant_seconds=100.0)
    gptq = run_rows("gptq", 4, 64, fp + [ppl_row(nll + (0.9 if t == "b" else 0.5), task=t) for t in texts],
                    quant_seconds=90.0)
    dec = decide.decide(pd.concat([awq, gptq]))
    assert [p.variant for p in dec.tasks] == ["gptq w4 g64", "awq w4 g64", "gptq w4 g64"]
    assert dec.overall == "awq w4 g64" and "not significantly worse than the best on 3 of them" in dec.overall_why
