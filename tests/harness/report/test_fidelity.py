"""Fidelity to FP: KL quantiles from the per-token statistic rows when present, else from per-item
samples; flips; the per-token rows take no part in the decision."""
import numpy as np
import pandas as pd

from harness import decide, report
from harness.blocks import Block
from harness.report import fidelity
from methods.fp import FP
from tests.harness.report.planted import planted_runs
from tests.harness.result_rows import run_rows, score_row

TOKENS = 400


def token_rows(values: dict) -> list[dict]:
    """The per-token statistic rows of code/humaneval (harness/eval/fidelity.py's names), ``values``
    per metric; means and shares with a standard error, quantiles with NaN."""
    return [{"suite": "code", "task": "humaneval", "metric": m, "value": v, "n": TOKENS,
             "stderr": 0.01 if m.endswith(("_mean", "_tok", "_covered")) else float("nan")} for m, v in values.items()]


AWQ_TOKENS = {"kl_tok_mean": 0.05, "kl_tok_p50": 0.02, "kl_tok_p99": 0.61, "kl_tok_p999": 1.74, "top1_same_tok": 0.93,
              "dp_ref_tok_mean": -0.004, "dp_ref_tok_p01": -0.31, "dp_ref_tok_p99": 0.22, "dp_ref_tok_covered": 0.95}


def with_token_rows() -> pd.DataFrame:
    """The planted runs plus per-token rows for AWQ on code (RTN has none: an older run)."""
    runs = planted_runs()
    awq = runs[runs["method"] == "awq"].iloc[0]
    extra = [{**awq.drop(labels=["samples"], errors="ignore").to_dict(), **r} for r in token_rows(AWQ_TOKENS)]
    return pd.concat([runs, pd.DataFrame(extra)], ignore_index=True)


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


def _paragraphs(blocks: list[Block]) -> list[str]:
    return [b.text for b in blocks if b.kind == "p"]


def test_token_rows_are_used_when_present():
    f = decide.frame(with_token_rows())
    t = fidelity.token_table(f)
    assert len(t) == 1 and t.iloc[0]["variant"] == "awq w4 g64" and t.iloc[0]["tokens"] == TOKENS
    row = t.iloc[0]
    assert (row["KL median"], row["KL p99"], row["KL p99.9"], row["KL mean"]) == ("0.02", "0.61", "1.74", "0.05")
    assert (row["same top token"], row["Δp mean"], row["Δp p01"]) == ("0.93", "-0.004", "-0.31")
    assert (row["Δp p99"], row["Δp covers"]) == ("+0.22", "0.95")
    items = report.fidelity_table(f)  # RTN on code still from its per-item samples; AWQ not twice
    assert list(items["variant"]) == ["rtn w4 g128"] and items.iloc[0]["items"] == 16
    text = " ".join(_paragraphs(fidelity.fidelity(f)))
    assert fidelity.TOKEN_CAPTION in text and fidelity.ITEM_CAPTION in text
    assert text.index(fidelity.TOKEN_CAPTION) < text.index(fidelity.ITEM_CAPTION)


def test_old_rows_fall_back_to_per_item_quantiles():
    f = decide.frame(planted_runs())
    assert fidelity.token_table(f).empty
    text = _paragraphs(fidelity.fidelity(f))
    assert fidelity.ITEM_CAPTION in text and fidelity.TOKEN_CAPTION not in text


def test_token_rows_take_no_part_in_the_decision():
    """Same picks, overall choice, no-signal list and variants table with and without the per-token rows;
    the rows stay in the frame, marked descriptive."""
    before, f = decide.recommend(decide.frame(planted_runs())), decide.frame(with_token_rows())
    after = decide.recommend(f)
    assert [(p.metric, p.variant, p.why) for p in after.tasks] == [(p.metric, p.variant, p.why) for p in before.tasks]
    assert (after.overall, after.overall_why, after.no_signal) == (before.overall, before.overall_why, before.no_signal)
    pd.testing.assert_frame_equal(after.table, before.table)
    tok = f[f["metric"].isin(list(fidelity.TOKEN_COLUMNS))]
    assert len(tok) == len(AWQ_TOKENS) and not tok["signal"].any()
    assert (tok["signal_why"] == decide.DESCRIPTIVE_WHY).all()
