"""Teacher-forced fidelity to FP: zero against itself, positive after a perturbation, and the top-k KL
is a close lower bound of the exact KL; the per-token statistics (KL quantiles, same top token, Δp of
the reference token) on hand-made cases."""
import math

import numpy as np
import pytest
import torch

from harness import results
from harness.eval.fidelity import (TokenValues, answer_logprobs, coarse_kl, exact_match_rows, fidelity_rows,
                                   fp_reference, metric_row, token_rows, token_values)
from harness.report.fidelity import TOKEN_COLUMNS
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
    """FP's whole distribution cached (k = vocabulary): every reference token is covered."""
    model = peaked_model()
    fp_rows, ref = fp_reference(model, smol_tokenizer, pairs, task="t", top_k=49152, batch_size=2)
    rows = by_metric(fidelity_rows(model, smol_tokenizer, pairs, ref, task="t", batch_size=2))
    assert rows["kl_to_fp"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rows["top1_agree_fp"]["value"] == 1.0
    assert rows["answer_nll"]["samples"] == pytest.approx(fp_rows[0]["samples"])
    per_item = [r for m, r in rows.items() if not results.is_descriptive(m)]
    assert len(per_item) == 3 and all(r["n"] == 3 and len(r["samples"]) == 3 for r in per_item)
    assert fp_rows[0]["value"] > 0
    assert rows["kl_tok_p999"]["value"] == pytest.approx(0.0, abs=1e-6) and rows["top1_same_tok"]["value"] == 1.0
    assert rows["dp_ref_tok_mean"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rows["dp_ref_tok_covered"]["value"] == 1.0
    assert rows["dp_ref_tok_p01"]["value"] == pytest.approx(0.0, abs=1e-6)


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
    assert 0 < rows["kl_tok_p50"]["value"] <= rows["kl_tok_p99"]["value"] <= rows["kl_tok_p999"]["value"]
    assert rows["top1_same_tok"]["value"] < 1.0


def test_per_item_rows_unchanged_and_token_rows_added(pairs, smol_tokenizer):
    """The per-item rows are what they were before the per-token rows existed (same arithmetic, bit for
    bit); the per-token rows follow them, one per statistic, without samples, and are descriptive."""
    _, ref = fp_reference(peaked_model(), smol_tokenizer, pairs, task="t", top_k=16, batch_size=2)
    model = peaked_model(seed=3)
    rows = fidelity_rows(model, smol_tokenizer, pairs, ref, task="t", batch_size=2)
    kl, agree, tokens = [], [], 0
    for (lp, target), p_top, p_idx in zip(answer_logprobs(model, smol_tokenizer, pairs, 2), ref.logprobs, ref.indices):
        kl.append(coarse_kl(p_top, p_idx, lp).mean().item())
        agree.append((lp.argmax(-1) == p_idx[:, 0].long()).double().mean().item())
        tokens += len(target)
    assert [r["metric"] for r in rows[:3]] == ["answer_nll", "kl_to_fp", "top1_agree_fp"]
    assert rows[1] == metric_row("t", "kl_to_fp", kl) and rows[2] == metric_row("t", "top1_agree_fp", agree)
    token = rows[3:]
    assert [r["metric"] for r in token] == list(TOKEN_COLUMNS)  # the report shows every one of them
    assert all(results.is_descriptive(r["metric"]) and "samples" not in r for r in token)
    over_covered = {"dp_ref_tok_mean", "dp_ref_tok_p01", "dp_ref_tok_p99"}  # n: the covered tokens only
    assert all(r["n"] == tokens for r in token if r["metric"] not in over_covered)


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


def _values(kl, same=(), covered=(), dp=()):
    return TokenValues(torch.tensor(kl, dtype=torch.float32), torch.tensor(same, dtype=torch.bool),
                       torch.tensor(covered, dtype=torch.bool), torch.tensor(dp, dtype=torch.float64))


def test_token_rows_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    items = [rng.gamma(0.5, 0.1, size).astype(np.float32) for size in (37, 5, 120, 1)]
    rows = {r["metric"]: r for r in token_rows("t", [_values(kl.tolist()) for kl in items])}
    pooled = np.concatenate(items).astype(np.float64)
    for metric, q in (("kl_tok_p50", 50), ("kl_tok_p99", 99), ("kl_tok_p999", 99.9)):
        assert rows[metric]["value"] == np.percentile(pooled, q) and rows[metric]["n"] == 163
        assert math.isnan(rows[metric]["stderr"])
    assert rows["kl_tok_mean"]["value"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert rows["kl_tok_mean"]["stderr"] == pytest.approx(pooled.std(ddof=1) / math.sqrt(163), rel=1e-12)
    assert rows["dp_ref_tok_mean"]["n"] == 0 and math.isnan(rows["dp_ref_tok_p01"]["value"])


def test_per_token_kl_is_the_closed_form():
    """Two-token vocabulary, k = 2 (the coarse KL is exact): KL(P‖Q) = a log(a/b) + (1−a) log((1−a)/(1−b))."""
    a, b = torch.tensor([0.9, 0.5, 0.7]), torch.tensor([0.6, 0.5, 0.2])
    p = torch.stack([a, 1 - a], -1).log()
    q = torch.stack([b, 1 - b], -1).log()
    values = token_values(q, torch.tensor([0, 1, 0]), *p.topk(2, dim=-1))
    closed = a * (a / b).log() + (1 - a) * ((1 - a) / (1 - b)).log()
    assert torch.allclose(values.kl, closed, atol=1e-6)
    rows = {r["metric"]: r for r in token_rows("t", [values])}
    assert rows["kl_tok_p50"]["value"] == pytest.approx(float(closed.median()), abs=1e-6)


def test_same_top_token_and_delta_p_by_hand():
    """Four positions, vocabulary of 4, FP's top-2 cached. FP's top-1 ids 0, 1, 1, 2; the model's argmax
    0, 1, 2, 2 (3 of 4 the same). Reference tokens 0, 3, 2, 2: in FP's top-2 at positions 0, 2, 3 with FP
    probability 0.6, 0.3, 0.5 and the model's 0.5, 0.5, 0.6; not at position 1 (Δp unknown there)."""
    fp = torch.tensor([[0.6, 0.3, 0.05, 0.05], [0.1, 0.6, 0.2, 0.1], [0.1, 0.6, 0.3, 0.0], [0.25, 0.1, 0.5, 0.15]])
    model = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.3, 0.5, 0.1], [0.2, 0.1, 0.6, 0.1]])
    p_top, p_idx = fp.log().topk(2, dim=-1)
    values = token_values(model.log(), torch.tensor([0, 3, 2, 2]), p_top, p_idx)
    assert values.same.tolist() == [True, True, False, True]
    assert values.covered.tolist() == [True, False, True, True]
    assert values.dp.numpy() == pytest.approx([-0.1, 0.2, 0.1], abs=1e-6)
    rows = {r["metric"]: r for r in token_rows("t", [values, _values([0.0], [False], [True], [0.3])])}
    assert rows["top1_same_tok"]["value"] == 0.6 and rows["top1_same_tok"]["n"] == 5
    assert rows["top1_same_tok"]["stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    assert rows["dp_ref_tok_covered"]["value"] == 0.8 and rows["dp_ref_tok_covered"]["n"] == 5
    dp = np.array([-0.1, 0.2, 0.1, 0.3])
    assert rows["dp_ref_tok_mean"]["n"] == 4 and rows["dp_ref_tok_mean"]["value"] == pytest.approx(dp.mean(), abs=1e-6)
    assert rows["dp_ref_tok_mean"]["stderr"] == pytest.approx(dp.std(ddof=1) / 2, abs=1e-6)
    assert rows["dp_ref_tok_p01"]["value"] == pytest.approx(np.percentile(dp, 1), abs=1e-6)
    assert rows["dp_ref_tok_p99"]["value"] == pytest.approx(np.percentile(dp, 99), abs=1e-6)
    assert math.isnan(rows["dp_ref_tok_p99"]["stderr"])


def test_answer_log_probs_equal_a_full_forward_of_each_pair(pairs, smol_tokenizer):
    """The batch projects only from its earliest answer start on (logits_to_keep); every pair's rows
    are still those of its own full, unbatched forward pass."""
    model = peaked_model()
    for (lp, target), (prompt, answer) in zip(answer_logprobs(model, smol_tokenizer, pairs, batch_size=3), pairs):
        p = smol_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + target.tolist()])
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        assert torch.allclose(lp, full[len(p) - 1:-1], atol=1e-4)
