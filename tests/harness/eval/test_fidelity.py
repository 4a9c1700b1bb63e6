"""Teacher-forced fidelity to FP: zero against itself, positive after a perturbation, and the top-k KL
is a close lower bound of the exact KL."""
import math

import pytest
import torch

from harness.eval.fidelity import (answer_logprobs, coarse_kl, exact_match_rows, fidelity_rows, fp_reference,
                                   metric_row)
from harness.eval.generation import render_chat
from tests.conftest import tiny_model

QA = [
    ("Add two numbers in Python.", "def add(a, b):\n    return a + b\n"),
    ("Give the weather as JSON.", '{"city": "Oslo", "temp_c": -3}'),
    ("Say hello.", "Hello!"),
]


@pytest.fixture(scope="module")
def pairs(smol_tokenizer):
    return [(render_chat(smol_tokenizer, [{"role": "user", "content": q}]), a) for q, a in QA]


def peaked_model(seed=2):
    """A random model whose next-token distributions are far from uniform (as a trained model's are)."""
    model = tiny_model("llama", seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model


def by_metric(rows):
    return {r["metric"]: r for r in rows}


def test_model_against_itself(pairs, smol_tokenizer):
    model = peaked_model()
    fp_rows, ref = fp_reference(model, smol_tokenizer, pairs, task="t", top_k=16, batch_size=2)
    rows = by_metric(fidelity_rows(model, smol_tokenizer, pairs, ref, task="t", batch_size=2))
    assert rows["kl_to_fp"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rows["top1_agree_fp"]["value"] == 1.0
    assert rows["answer_nll"]["samples"] == pytest.approx(fp_rows[0]["samples"])
    assert all(r["n"] == 3 and len(r["samples"]) == 3 for r in rows.values())
    assert fp_rows[0]["value"] > 0


def test_perturbed_model_diverges(pairs, smol_tokenizer):
    fp = peaked_model()
    _, ref = fp_reference(fp, smol_tokenizer, pairs, task="t", top_k=16, batch_size=2)
    noisy = peaked_model()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in noisy.model.layers.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    rows = by_metric(fidelity_rows(noisy, smol_tokenizer, pairs, ref, task="t", batch_size=3))
    assert rows["kl_to_fp"]["value"] > 1e-3
    assert all(x > 0 for x in rows["kl_to_fp"]["samples"])
    assert rows["top1_agree_fp"]["value"] < 1.0


def test_answer_positions_are_the_answer_tokens(pairs, smol_tokenizer):
    model = tiny_model("llama", seed=2)
    for (lp, target), (_, answer) in zip(answer_logprobs(model, smol_tokenizer, pairs, batch_size=3), pairs):
        assert smol_tokenizer.decode(target) == answer
        assert lp.shape == (len(target), 49152)


def test_coarse_kl_bounds_exact_kl():
    g = torch.Generator().manual_seed(0)
    p = torch.log_softmax(3 * torch.randn(5, 200, generator=g), -1)
    q = torch.log_softmax(p + 0.7 * torch.randn(5, 200, generator=g), -1)
    exact = (p.exp() * (p - q)).sum(-1)
    full = coarse_kl(*p.topk(200, dim=-1), q)
    assert torch.allclose(full, exact, atol=1e-5)
    top20 = coarse_kl(*p.topk(20, dim=-1), q)
    assert (top20 <= exact + 1e-6).all() and (top20 > 0.5 * exact).all()


def test_exact_match_rows():
    assert exact_match_rows(["a", "b"], None, task="t") == []
    row = exact_match_rows(["a ", "b", "c", "d"], ["a", "x", "c", "d"], task="t")[0]
    assert row["value"] == 0.75 and row["samples"] == [1.0, 0.0, 1.0, 1.0]
    assert row["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))


def test_metric_row_stderr():
    row = metric_row("t", "m", [1.0, 2.0, 3.0])
    assert row["value"] == 2.0 and row["n"] == 3 and row["stderr"] == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(metric_row("t", "m", [1.0])["stderr"])
