"""tool_calls end to end on a tiny random model with the real SmolLM2 tokenizer."""
import pytest

from harness.eval import tool_calls as tc
from tests.harness.eval.suite_helpers import by_metric, eval_cfg, perturbed
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def setup(smol_tokenizer):
    cfg = eval_cfg(**{"tool_calls.categories": ["simple", "multiple", "parallel"], "tool_calls.n_per_category": 1,
                      "tool_calls.max_new_tokens": 6, "fidelity_top_k": 8})
    s = tc.SUITE.settings(cfg)
    return s, tc.SUITE.prepare(smol_tokenizer, s), tiny_model("llama")


def test_prompts_show_the_tools(setup, smol_tokenizer):
    _, data, _ = setup
    assert [p.category for p in data.problems] == ["simple", "multiple", "parallel"]
    for p, prompt in zip(data.problems, data.prompts):
        # SmolLM2's template ignores tools=, so they arrive in a system message
        assert all(f["name"] in prompt for f in p.functions)
        assert p.messages[-1]["content"] in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_fp_then_quantized_rows(setup, smol_tokenizer):
    s, data, model = setup
    fp = tc.SUITE.evaluate(model, smol_tokenizer, data, s)
    rows = fp.rows
    assert {(r["task"], r["metric"]) for r in rows} >= {("simple", "ast_match"), ("multiple", "ast_match"),
                                                       ("parallel", "ast_match"), ("all", "ast_match"),
                                                       ("all", "parse_rate"), ("all", "answer_nll")}
    overall = by_metric(rows, "all")
    assert overall["ast_match"]["n"] == 3 and overall["ast_match"]["value"] == 0.0  # random weights call nothing
    assert overall["answer_nll"]["value"] > 5  # ~log(49152) for a random model
    assert len(fp.reference["answers"]) == 3

    same = by_metric(tc.SUITE.evaluate(model, smol_tokenizer, data, s, reference=fp.reference).rows, "all")
    assert same["kl_to_fp"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert same["top1_agree_fp"]["value"] == 1.0 and same["exact_match_fp"]["value"] == 1.0

    other = by_metric(tc.SUITE.evaluate(perturbed(model, 0.5), smol_tokenizer, data, s, reference=fp.reference).rows, "all")
    assert other["kl_to_fp"]["value"] > 1e-6  # a random model is near-uniform: small but non-zero
