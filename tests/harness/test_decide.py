"""harness.decide: the comparison frame (values vs FP, tolerance, intervals) and the picks."""
import math
import re

import numpy as np
import pandas as pd
import pytest

from harness import decide, store
from harness.config import DecisionConfig
from methods.fp import FP
from tests.harness.result_rows import fixture_store, ppl_row, run_rows, score_row  # noqa: F401  (fixture)


# ---------------------------------------------------------------- the frame

def small_runs(awq_shift=0.01, rtn_shift=0.25, n=16):
    rng = np.random.default_rng(5)
    nll = rng.normal(2.5, 0.4, n)
    passed = (rng.random(n) < 0.5).astype(float)
    worse = passed.copy()
    worse[np.flatnonzero(passed)[:4]] = 0.0  # 4 of n problems lost
    fp = [dict(ppl_row(nll), method=FP), dict(score_row(passed), method=FP)]
    return pd.concat([run_rows("awq", 4, 64, fp + [ppl_row(nll + awq_shift), score_row(passed)]),
                      run_rows("rtn", 4, 64, fp + [ppl_row(nll + rtn_shift), score_row(worse)], quant_seconds=1.0)],
                     ignore_index=True)


def test_frame_has_one_row_per_variant_and_task_metric_with_fp_values():
    f = decide.frame(small_runs())
    assert len(f) == 6 and not f.duplicated(decide.FRAME_KEY).any()  # FP once, whatever run it came with
    assert set(f["variant"]) == {FP, "awq w4 g64", "rtn w4 g64"}
    ppl = f[f["metric"] == "ppl_token"].set_index("variant")
    assert (ppl["fp_value"] == ppl.loc[FP, "value"]).all()
    # perplexity loss is relative: NLL +0.01 per token is exp(0.01) - 1 = +1.005%
    assert math.isclose(ppl.loc["awq w4 g64", "loss"], math.expm1(0.01), rel_tol=1e-9)
    assert math.isclose(ppl.loc["awq w4 g64", "loss_tol"], math.expm1(0.01) / DecisionConfig().ppl_rel_tol)
    assert ppl.loc["awq w4 g64", "vs_fp"] == "+1.0% vs FP"
    code = f[f["metric"] == "pass@1"].set_index("variant")
    assert math.isclose(code.loc["rtn w4 g64", "loss"], 4 / 16) and code.loc["rtn w4 g64", "vs_fp"] == "-0.250 vs FP"
    assert ppl.loc[FP, "loss"] == 0 and ppl.loc[FP, "within"] and ppl.loc[FP, "interval"] == "the reference"


def test_frame_within_tolerance_and_intervals():
    f = decide.frame(small_runs()).set_index(["variant", "metric"])
    awq, rtn = f.loc[("awq w4 g64", "ppl_token")], f.loc[("rtn w4 g64", "ppl_token")]
    assert awq["within"] and awq["loss"] <= DecisionConfig().ppl_rel_tol  # within by size of the loss
    assert not rtn["within"] and rtn["significant"] and rtn["lo"] > 0  # +28% and clearly so
    assert rtn["interval"] == "paired bootstrap over 16 items" and rtn["lo"] < rtn["diff"] < rtn["hi"]
    # AWQ solved exactly FP's problems: loss 0 on pass@1; RTN lost 4 of 16: beyond the 0.02 tolerance
    assert f.loc[("awq w4 g64", "pass@1"), "within"] and not f.loc[("rtn w4 g64", "pass@1"), "within"]


def test_a_loss_beyond_tolerance_that_is_not_significant_is_within():
    """The second half of the tolerance rule: a loss the interval cannot tell from 0."""
    row = lambda v, m=None: {"suite": "json", "task": "schema", "metric": "json_valid", "value": v,  # noqa: E731
                             "stderr": 0.05, "n": 40, **({"method": m} if m else {})}
    df = run_rows("awq", 4, 64, [row(0.90, FP), row(0.85)])
    q = decide.frame(df).set_index("variant").loc["awq w4 g64"]
    assert q["loss"] > DecisionConfig().score_abs_tol and not q["significant"] and q["within"]
    assert q["interval"] == "normal interval from stderr"


def test_frame_without_fp_and_tolerance_of_zero():
    df = small_runs()
    f = decide.frame(df[df["method"] != FP])
    assert f["fp_value"].isna().all() and not f["within"].any() and (f["vs_fp"] == "").all()
    cfg = DecisionConfig(ppl_rel_tol=0.0)
    z = decide.frame(df, cfg).set_index(["variant", "metric"])
    assert z.loc[("awq w4 g64", "ppl_token"), "loss_tol"] == math.inf
    assert z.loc[(FP, "ppl_token"), "loss_tol"] == 0.0


def test_loss_and_tolerance_follow_the_metric_direction():
    cfg = DecisionConfig(ppl_rel_tol=0.02, score_abs_tol=0.03)
    assert math.isclose(decide.loss("ppl_token", 10.2, 10.0), 0.02)
    assert math.isclose(decide.loss("kl_to_fp", 0.0, 0.0), 0.0) and decide.loss("kl_to_fp", 0.1, 0.0) == math.inf
    assert math.isclose(decide.loss("pass@1", 0.5, 0.6), 0.1)
    assert decide.tolerance("answer_nll", cfg) == 0.02 and decide.tolerance("pass@1", cfg) == 0.03
    assert decide.describe_change("ppl_token", 0.012) == "+1.2% vs FP"
    assert decide.describe_change("pass@1", 0.03) == "-0.030 vs FP"


def test_frame_is_idempotent_and_keeps_study_rows_flagged(fixture_store):
    df = store.load(fixture_store)
    f = decide.frame(df)
    assert f["study"].sum() == 2 and set(f.loc[f["study"], "method"]) == {"salience"}
    again = decide.frame(f)
    assert list(again.columns) == list(f.columns) and again["loss"].equals(f["loss"])


# ---------------------------------------------------------------- intervals

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


def test_no_stderr_gives_an_unknown_interval():
    a = pd.Series({"metric": "pass@1", "value": 0.5, "stderr": None})
    iv = decide.compare(a, a, DecisionConfig())
    assert not iv.known and not iv.significant and iv.how == "no standard error"


def test_one_item_is_never_significant():
    """A binomial share of one item is 0 or 1 with a zero standard error: 0 vs 1 must not count."""
    a = pd.Series({"metric": "needle_match", "value": 0.0, "stderr": 0.0, "n": 1})
    b = pd.Series({"metric": "needle_match", "value": 1.0, "stderr": 0.0, "n": 1})
    iv = decide.compare(a, b, DecisionConfig())
    assert iv.diff == -1.0 and not iv.known and not iv.significant and "one item" in iv.how
    two = decide.compare(a, pd.Series({**b.to_dict(), "n": 2, "stderr": 0.1}), DecisionConfig())
    assert not two.known  # either side with one item is enough


# ---------------------------------------------------------------- picks

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
    assert "salience" not in " ".join(row.index)  # study rows are no candidates


def test_decide_equals_recommend_on_the_frame(fixture_store):
    df = store.load(fixture_store)
    a, b = decide.decide(df), decide.recommend(decide.frame(df))
    assert a.overall == b.overall and a.overall_why == b.overall_why and a.table.equals(b.table)


def test_variant_table_names_the_worst_loss():
    dec = decide.decide(small_runs())
    row = dec.table.set_index("variant").loc["rtn w4 g64"]
    assert row["tasks"] == 2 and row["within"] == 0
    assert row["worst"].startswith("+") and row["worst"].endswith("on prose_en (ppl_token)")
    assert dec.overall == "awq w4 g64"


def test_significant_winner_is_explained(fixture_store):
    df = store.load(fixture_store)
    df = df[df.method.isin([FP, "rtn", "awq"])]
    pick = next(p for p in decide.decide(df).tasks if p.metric == "ppl_token")
    assert not pick.tie and pick.variant == "awq w4 g64"
    assert "best of 2" in pick.why and "significantly better than rtn w4 g64" in pick.why
    assert re.search(r"\+1\.\d% vs FP", pick.why)  # NLL +0.01 per token is +1.0% perplexity


def test_a_tie_between_equal_sizes_goes_to_the_quicker_method():
    nll = np.linspace(2.0, 2.4, 8)
    rows = [dict(ppl_row(nll), method=FP), ppl_row(nll + 0.1)]
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
    fp = [dict(ppl_row(nll, task=t), method=FP) for t in texts]
    awq = run_rows("awq", 4, 64, fp + [ppl_row(nll + 0.5, task=t) for t in texts], quant_seconds=100.0)
    gptq = run_rows("gptq", 4, 64, fp + [ppl_row(nll + (0.9 if t == "b" else 0.5), task=t) for t in texts],
                    quant_seconds=90.0)
    dec = decide.decide(pd.concat([awq, gptq]))
    assert [p.variant for p in dec.tasks] == ["gptq w4 g64", "awq w4 g64", "gptq w4 g64"]
    assert dec.overall == "awq w4 g64" and "not significantly worse than the best on 3 of them" in dec.overall_why


@pytest.mark.parametrize("keep, why", [(["awq"], "no FP reference rows"), ([FP], "no quantized variants")])
def test_without_fp_or_without_quantized_rows(keep, why):
    df = small_runs()
    dec = decide.decide(df[df["method"].isin(keep)])
    assert why in dec.overall_why
    assert (dec.overall == "awq w4 g64") if keep == ["awq"] else dec.overall is None


# ---------------------------------------------------------------- the signal rule

def runs_with(extra_fp, extra_awq, extra_rtn):
    """small_runs plus one more task metric per variant (rows built by the caller)."""
    rng = np.random.default_rng(5)
    nll = rng.normal(2.5, 0.4, 16)
    fp = [dict(ppl_row(nll), method=FP), dict(extra_fp, method=FP)]
    return pd.concat([run_rows("awq", 4, 64, fp + [ppl_row(nll + 0.01), extra_awq]),
                      run_rows("rtn", 4, 64, fp + [ppl_row(nll + 0.25), extra_rtn], quant_seconds=1.0)],
                     ignore_index=True)


def json_row(passed, metric="schema_valid"):
    return score_row(np.asarray(passed, dtype=float), task="json_schema", suite="json", metric=metric)


def test_a_metric_every_variant_scores_zero_has_no_signal_and_no_recommendation():
    zeros = json_row(np.zeros(16))
    f = decide.frame(runs_with(zeros, zeros, zeros))
    schema = f[f["metric"] == "schema_valid"]
    assert not schema["signal"].any() and (f.loc[f["metric"] == "ppl_token", "signal"]).all()
    assert schema["signal_why"].iloc[0] == "no signal at this size (n=16): all at 0 (the floor)"
    dec = decide.recommend(f)
    assert [p.metric for p in dec.tasks] == ["ppl_token"]  # no pick on schema_valid, not even a tie
    assert [(n.metric, n.why) for n in dec.no_signal] == [("schema_valid", schema["signal_why"].iloc[0])]
    assert (dec.table["tasks"] == 1).all()  # out of the within-tolerance counts and the votes
    assert dec.overall == "awq w4 g64"


def test_one_lucky_item_is_no_signal_but_a_drop_from_the_ceiling_is():
    one = np.zeros(16)
    one[3] = 1.0  # the HumanEval case: FP 0/20, one variant 1/20
    f = decide.frame(runs_with(json_row(np.zeros(16), "pass@1"), json_row(one, "pass@1"), json_row(np.zeros(16), "pass@1")))
    why = f.loc[f["metric"] == "pass@1", "signal_why"].iloc[0]
    assert why == "no signal at this size (n=16): no two of FP and the 2 variants differ significantly"
    dropped = np.ones(16)
    dropped[:10] = 0.0  # FP and AWQ at the ceiling, RTN loses 10 of 16: that is evidence
    f = decide.frame(runs_with(json_row(np.ones(16), "needle_match"), json_row(np.ones(16), "needle_match"),
                               json_row(dropped, "needle_match")))
    assert f.loc[f["metric"] == "needle_match", "signal"].all()


def test_recovery_is_quantized_over_fp_for_scores_only():
    f = decide.frame(small_runs()).set_index(["variant", "metric"])
    assert math.isclose(f.loc[("rtn w4 g64", "pass@1"), "recovery"],
                        f.loc[("rtn w4 g64", "pass@1"), "value"] / f.loc[(FP, "pass@1"), "value"])
    assert math.isnan(f.loc[("rtn w4 g64", "ppl_token"), "recovery"])


# ---------------------------------------------------------------- deployment constraints

def two_widths():
    """awq w4 (close to FP) and awq w3 (far from it): w4 is the pick, w3 the smaller."""
    rng = np.random.default_rng(7)
    nll = rng.normal(2.5, 0.4, 16)
    fp = [dict(ppl_row(nll), method=FP)]
    return pd.concat([run_rows("awq", 4, 64, fp + [ppl_row(nll + 0.01)]),
                      run_rows("awq", 3, 64, fp + [ppl_row(nll + 0.3)])], ignore_index=True)


def test_a_memory_cap_excludes_the_larger_variant():
    f = decide.frame(two_widths())
    assert decide.recommend(f).overall == "awq w4 g64"
    sizes = f.drop_duplicates("variant").set_index("variant")["weight_bytes"] / 1e6
    cap = (sizes["awq w4 g64"] + sizes["awq w3 g64"]) / 2
    dec = decide.recommend(f, DecisionConfig(max_weight_mb=cap))
    assert dec.overall == "awq w3 g64" and list(dec.excluded) == ["awq w4 g64"]
    assert dec.excluded["awq w4 g64"] == f"{decide.mb(sizes['awq w4 g64'] * 1e6)} exceeds the {cap:g} MB budget"
    assert "awq w4 g64" not in set(dec.table["variant"]) and all(p.variant != "awq w4 g64" for p in dec.tasks)


def test_a_runtime_excludes_what_it_cannot_load_and_both_constraints_can_leave_none():
    f = decide.frame(two_widths())
    dec = decide.recommend(f, DecisionConfig(runtime="vllm"))
    assert dec.overall == "awq w4 g64" and "would load w3 g64 as gptq" in dec.excluded["awq w3 g64"]
    none = decide.recommend(f, DecisionConfig(runtime="vllm", max_weight_mb=0.1))
    assert none.overall is None and none.overall_why.startswith("no variant meets the constraints (at most 0.1 MB")


# ---------------------------------------------------------------- fidelity statistics and flips

def test_kl_quantiles_match_numpy():
    rng = np.random.default_rng(3)
    kl = rng.gamma(0.5, 0.2, 1000)
    d = decide.distribution(np.append(kl, np.nan))  # NaN items are left out
    assert d["mean"] == pytest.approx(kl.mean()) and d["median"] == pytest.approx(np.median(kl))
    assert d["p99"] == pytest.approx(np.percentile(kl, 99)) and d["p99.9"] == pytest.approx(np.percentile(kl, 99.9))
    assert decide.distribution([0.0, 1.0])["p99"] == pytest.approx(0.99)  # linear interpolation
    assert all(math.isnan(v) for v in decide.distribution([]).values())


def test_flips_are_counted_per_item():
    fl = decide.flips([1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 0, 0])
    assert (fl.lost, fl.gained, fl.net, fl.n) == (2, 1, -1, 6)
    assert decide.flips([1, 0], [0.5, 1]) is None  # not pass/fail
    assert decide.flips([1, 0, 1], [1, 0]) is None and decide.flips(None, [1]) is None
