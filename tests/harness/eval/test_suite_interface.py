"""The suite interface: each suite reads its own settings; the pipeline's functions take the whole config."""
import pytest
import torch

import harness.eval as suites
from harness.errors import HarnessError
from harness.eval import code, long_context, perplexity, tool_calls, views
from tests.conftest import tiny_model
from tests.harness.eval.suite_helpers import eval_cfg


def test_unknown_suite_names_the_choices():
    with pytest.raises(HarnessError, match="unknown eval suite 'nope'; available: perplexity, code, json"):
        suites.suite("nope")
    with pytest.raises(HarnessError, match="unknown eval suite 'nope'"):
        suites.prepare("nope", None, eval_cfg())


def test_settings_read_the_suite_node_and_the_shared_fields():
    cfg = eval_cfg(seed=7, **{"code.n_problems": 3, "code.sandbox.wall_seconds": 2.5, "gen_batch_size": 5,
                              "fidelity_top_k": 9, "tool_calls.categories": ["simple"],
                              "long_context.needle_depths": [0.5], "seqlen": 32, "texts": ["a.txt"]})
    s = suites.settings("code", cfg)
    assert (s.n_problems, s.max_new_tokens, s.sandbox.wall_seconds) == (3, cfg.eval.code.max_new_tokens, 2.5)
    assert s.generation == views.GenerationSettings(5, 9)
    t = tool_calls.SUITE.settings(cfg)
    assert t.categories == ["simple"] and type(t.categories) is list and t.seed == 7
    lc = long_context.SUITE.settings(cfg)
    assert lc.needle_depths == [0.5] and lc.seed == 7 and lc.fidelity_top_k == 9
    assert perplexity.SUITE.settings(cfg) == perplexity.PerplexitySettings(["a.txt"], 32, cfg.eval.max_windows,
                                                                           cfg.eval.batch_size)


def test_view_refuses_a_missing_field():
    with pytest.raises(Exception, match="gen_batch_size"):
        views.view(views.GenerationSettings, object())


def test_settings_reach_prepare():
    with pytest.raises(HarnessError, match=r"eval.code.max_new_tokens must be >= 1 \(got 0\)"):
        suites.prepare("code", None, eval_cfg(**{"code.max_new_tokens": 0}))
    assert len(suites.prepare("code", None, eval_cfg(**{"code.n_problems": 2}))) == 2
    assert len(code.SUITE.prepare(None, code.SUITE.settings(eval_cfg(**{"code.n_problems": 4})))) == 4


def test_pipeline_functions_equal_the_suite_calls(smol_tokenizer, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    cfg = eval_cfg(texts=[str(text)], seqlen=32, max_windows=3, batch_size=2)
    prepared = suites.prepare_all(["perplexity"], smol_tokenizer, cfg)
    assert list(prepared) == ["perplexity"] and prepared["perplexity"][0].windows.shape == (3, 32)
    model = tiny_model("llama")
    s = perplexity.SUITE.settings(cfg)
    direct = perplexity.SUITE.evaluate(model, smol_tokenizer, perplexity.SUITE.prepare(smol_tokenizer, s), s)
    via = suites.evaluate("perplexity", model, smol_tokenizer, prepared["perplexity"], cfg)
    assert via.rows == direct.rows
    assert torch.equal(prepared["perplexity"][0].windows, suites.prepare("perplexity", smol_tokenizer, cfg)[0].windows)


def test_check_installed_reaches_the_suite(monkeypatch):
    calls = []
    monkeypatch.setattr(code.SUITE, "check_installed", lambda: calls.append("code"), raising=False)
    suites.check_installed("code")
    suites.check_installed("perplexity")  # no data package: nothing to check
    assert calls == ["code"]
