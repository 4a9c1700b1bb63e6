"""The shared scored forward pass: NLL arithmetic, the tail variant, and the finite-logits guard."""
import math
from types import SimpleNamespace

import pytest
import torch

from harness.errors import HarnessError
from harness.eval import scoring


class TableLogits(torch.nn.Module):
    """A 'model' whose logits at position t are ``table[t]`` for every row: [seqlen, vocab]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.device = torch.device("cpu")
        self.calls = 0

    def forward(self, input_ids, use_cache=False):
        self.calls += 1
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.table[:t].expand(b, t, -1).clone())


def _two_token_model(seqlen):
    # p(0) = 0.8 at every position
    return TableLogits([[math.log(0.8), math.log(0.2)]] * seqlen)


def test_window_nll_sums_each_windows_predicted_tokens():
    windows = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    model = _two_token_model(4)
    nll = scoring.window_nll(model, windows, batch_size=2)
    a, b = -math.log(0.8), -math.log(0.2)
    assert nll.dtype == torch.float64 and model.calls == 2  # batches of 2 and 1
    assert nll.tolist() == pytest.approx([3 * a, 3 * b, 2 * b + a], rel=1e-6)


def test_tail_scores_only_the_last_tokens():
    windows = torch.tensor([[1, 1, 0, 0, 1]])
    model = _two_token_model(5)
    a, b = -math.log(0.8), -math.log(0.2)
    assert scoring.window_nll(model, windows, 1, tail=2).item() == pytest.approx(a + b, rel=1e-6)
    full = scoring.window_nll(model, windows, 1)
    assert scoring.window_nll(model, windows, 1, tail=4).item() == full.item()


def test_logprobs_per_window_agree_with_window_nll():
    g = torch.Generator().manual_seed(0)
    model = TableLogits(torch.randn(6, 5, generator=g))
    windows = torch.randint(0, 5, (3, 6), generator=g)
    lps = list(scoring.window_logprobs(model, windows, batch_size=2))
    assert len(lps) == 3 and lps[0].shape == (5, 5)
    gathered = [scoring.gathered_nll(lp, w[1:]) for lp, w in zip(lps, windows)]
    assert gathered == pytest.approx(scoring.window_nll(model, windows, 2).tolist(), rel=1e-6)


def test_sum_reduction_equals_the_per_token_total():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(2, 3, 7, generator=g), torch.randint(0, 7, (2, 3), generator=g)
    per_token = scoring.token_nll(logits, targets)
    assert per_token.shape == (2, 3)
    assert scoring.token_nll(logits, targets, reduction="sum").item() == pytest.approx(per_token.sum().item(), rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scored_logits_raise(bad):
    table = torch.zeros(4, 3)
    table[1, 2] = bad  # position 1 predicts token 2: a scored position
    windows = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(HarnessError, match=r"NaN/inf logits \(probe\); the quantized weights are broken"):
        scoring.window_nll(TableLogits(table), windows, 1, desc="probe")
    with pytest.raises(scoring.NonFiniteLogits):
        list(scoring.window_logprobs(TableLogits(table), windows, 1))
    with pytest.raises(scoring.NonFiniteLogits):
        scoring.window_nll(TableLogits(table), windows, 1, tail=3)


def test_logits_that_predict_nothing_scored_are_not_checked():
    table = torch.zeros(4, 3)
    table[3] = float("nan")  # the last position predicts past the window
    table[0] = float("nan")  # with tail=2 only positions 1 and 2 are scored
    windows = torch.zeros(1, 4, dtype=torch.long)
    assert scoring.window_nll(TableLogits(table), windows, 1, tail=2).item() == pytest.approx(2 * math.log(3))


def test_tiny_model_with_nan_weights_is_caught(smol_tokenizer):
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(scoring.NonFiniteLogits):
        scoring.window_nll(model, torch.randint(0, 1000, (2, 8)), 2)


def test_chunked_nll_equals_the_whole_batch_upcast(monkeypatch):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 9, 11, generator=g) * 4).bfloat16()
    targets = torch.randint(0, 11, (2, 9), generator=g)
    monkeypatch.setattr(scoring, "NLL_CHUNK_ELEMENTS", 4 * 11)  # 4 rows a piece: 9 rows end in a partial piece
    assert torch.equal(scoring.chunked_token_nll(logits, targets, "t"), scoring.token_nll(logits.float(), targets))
    logits[1, 8, 3] = float("nan")  # in the last, partial piece
    with pytest.raises(scoring.NonFiniteLogits):
        scoring.chunked_token_nll(logits, targets, "t")
