"""The shared generate → score → fidelity → exact-match flow on a tiny random model."""
import pytest

from harness import results
from harness.eval.generation import greedy_generate, render_chat
from harness.eval.generation_suite import GenerationJob, evaluate_generation
from harness.eval.views import GenerationSettings
from tests.conftest import tiny_model
from tests.harness.eval.suite_helpers import by_metric, perturbed

QUESTIONS = ["Name a colour.", "What is two plus two?", "Say hello."]
SETTINGS = GenerationSettings(gen_batch_size=2, fidelity_top_k=8)


@pytest.fixture(scope="module")
def job(smol_tokenizer):
    prompts = [render_chat(smol_tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return GenerationJob("t", prompts, ["Blue.", "Four.", "Hello!"], max_new_tokens=5, desc="test")


def _scorer(seen):
    def score(outputs):
        seen.append(outputs)
        return [{"task": "t", "metric": "length", "value": float(sum(map(len, outputs))), "stderr": 0.0, "n": 3}]
    return score


def test_fp_run_scores_greedy_outputs_and_keeps_the_reference(job, smol_tokenizer):
    model = tiny_model("llama")
    seen = []
    out = evaluate_generation(model, smol_tokenizer, job, _scorer(seen), SETTINGS)
    assert seen == [greedy_generate(model, smol_tokenizer, job.prompts, 5, batch_size=1)]
    assert [r["metric"] for r in out.rows] == ["length", "answer_nll"]
    assert out.rows[1]["task"] == "t" and out.rows[1]["n"] == 3 and out.rows[1]["value"] > 5
    assert out.reference["outputs"] == seen[0]
    assert len(out.reference["fidelity"].logprobs) == 3 and out.reference["fidelity"].logprobs[0].shape[-1] == 8


def test_quantized_run_is_compared_with_the_reference(job, smol_tokenizer):
    model = tiny_model("llama")
    fp = evaluate_generation(model, smol_tokenizer, job, _scorer([]), SETTINGS, outputs_key="answers")
    assert set(fp.reference) == {"fidelity", "answers"}
    same = evaluate_generation(model, smol_tokenizer, job, _scorer([]), SETTINGS, fp.reference, outputs_key="answers")
    assert same.reference is None
    judged = [r["metric"] for r in same.rows if not results.is_descriptive(r["metric"])]  # per-token statistics aside
    assert judged == ["length", "answer_nll", "kl_to_fp", "top1_agree_fp", "exact_match_fp"]
    rows = by_metric(same.rows)
    assert rows["kl_to_fp"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert rows["top1_agree_fp"]["value"] == 1.0 and rows["exact_match_fp"]["value"] == 1.0
    other = by_metric(evaluate_generation(perturbed(model, 0.5), smol_tokenizer, job, _scorer([]), SETTINGS,
                                          fp.reference, outputs_key="answers").rows)
    assert other["kl_to_fp"]["value"] > 1e-6
    assert other["answer_nll"]["value"] != by_metric(fp.rows)["answer_nll"]["value"]
