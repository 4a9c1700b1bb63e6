"""lm_eval suite: the shipped offline task on a tiny random model, and the clear errors."""
import importlib.util
import sys

import pytest

from harness.errors import HarnessError
from harness.eval import lm_eval_adapter as adapter
from tests.conftest import tiny_model
from tests.harness.eval.suite_helpers import by_metric, eval_cfg

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval not installed (pip install quant-harness[lmeval])")


def test_missing_lm_eval_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(HarnessError, match=r"pip install quant-harness\[lmeval\]"):
        adapter.SUITE.prepare(None, adapter.SUITE.settings(eval_cfg()))


def test_result_rows_convert_lm_eval_output():
    out = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.25, "acc_norm,none": 0.75,
                             "acc_norm_stderr,none": "N/A"}},
           "n-samples": {"t": {"original": 10, "effective": 4}},
           "samples": {"t": [{"acc": 1.0, "acc_norm": 1.0}, {"acc": 0.0, "acc_norm": 1.0},
                             {"acc": 1.0, "acc_norm": 1.0}, {"acc": 0.0, "acc_norm": 0.0}]}}
    rows = by_metric(adapter.result_rows(out))
    assert rows["acc"]["value"] == 0.5 and rows["acc"]["stderr"] == 0.25 and rows["acc"]["n"] == 4
    assert rows["acc"]["samples"] == [1.0, 0.0, 1.0, 0.0]
    assert rows["acc_norm"]["stderr"] != rows["acc_norm"]["stderr"]  # "N/A" -> NaN
    assert set(rows) == {"acc", "acc_norm"}


@needs_lm_eval
def test_unknown_task_lists_the_shipped_ones():
    with pytest.raises(HarnessError, match="unknown lm-eval task 'no_such_task'; shipped offline tasks: qh_everyday_mc"):
        adapter.SUITE.prepare(None, adapter.SUITE.settings(eval_cfg(tasks=["no_such_task"])))


@needs_lm_eval
def test_shipped_task_runs_offline_on_the_in_memory_model(smol_tokenizer):
    cfg = eval_cfg(**{"tasks": ["qh_everyday_mc"], "lm_eval.limit": 6, "lm_eval.batch_size": 2})
    s = adapter.SUITE.settings(cfg)
    data = adapter.SUITE.prepare(smol_tokenizer, s)
    model = tiny_model("llama")
    rows = by_metric(adapter.SUITE.evaluate(model, smol_tokenizer, data, s).rows, "qh_everyday_mc")
    assert set(rows) == {"acc", "acc_norm"}
    for r in rows.values():
        assert r["n"] == 6 and len(r["samples"]) == 6 and 0.0 <= r["value"] <= 1.0
        assert r["value"] == pytest.approx(sum(r["samples"]) / 6)
    # the in-memory weights are what lm-eval scored: a different model changes per-item scores
    other = by_metric(adapter.SUITE.evaluate(tiny_model("llama", seed=5), smol_tokenizer, data, s).rows)
    assert other["acc"]["samples"] != rows["acc"]["samples"] or other["acc_norm"]["samples"] != rows["acc_norm"]["samples"]
