import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.errors import HarnessError
from harness.eval import perplexity


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is the same fixed vector at every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.device = torch.device("cpu")

    def forward(self, input_ids, use_cache=False):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(b, t, -1).clone())


def test_uniform_distribution_gives_vocab_size():
    windows = torch.randint(0, 7, (3, 10))
    text = perplexity.EvalText("t", "t.txt", windows, 30)
    row = perplexity.evaluate(FixedLogits([0.0] * 7), text, batch_size=2)
    assert row["value"] == pytest.approx(7.0, rel=1e-6)
    assert row["windows"] == 3 and row["tokens"] == 27 and row["seqlen"] == 10
    assert row["stderr"] == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_two_token_vocab():
    # p(0) = 0.8, p(1) = 0.2. Window A predicts [0, 0, 0]; window B predicts [1, 1, 1].
    logits = [math.log(0.8), math.log(0.2)]
    windows = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    text = perplexity.EvalText("t", "t.txt", windows, 8)
    row = perplexity.evaluate(FixedLogits(logits), text, batch_size=1)
    mean_nll = (3 * -math.log(0.8) + 3 * -math.log(0.2)) / 6
    assert row["value"] == pytest.approx(math.exp(mean_nll), rel=1e-6)
    per_window = torch.tensor([-math.log(0.8), -math.log(0.2)], dtype=torch.float64)
    se = per_window.std(unbiased=True).item() / math.sqrt(2)
    assert row["stderr"] == pytest.approx(math.exp(mean_nll) * se, rel=1e-6)


def test_windows_do_not_overlap_and_respect_max():
    ids = torch.arange(105)
    w = perplexity.make_windows(ids, 10, 0)
    assert w.shape == (10, 10) and torch.equal(w.flatten(), torch.arange(100))
    assert perplexity.make_windows(ids, 10, 4).shape == (4, 10)


def test_nan_logits_are_a_clear_error():
    text = perplexity.EvalText("t", "t.txt", torch.zeros(1, 4, dtype=torch.long), 4)
    with pytest.raises(HarnessError, match="NaN/inf"):
        perplexity.evaluate(FixedLogits([float("nan"), 0.0]), text, batch_size=1)


def test_empty_and_short_texts_are_rejected(tmp_path, smol_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(HarnessError, match="is empty"):
        perplexity.prepare(empty, smol_tokenizer, 16, 0)
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    with pytest.raises(HarnessError, match="too short"):
        perplexity.prepare(short, smol_tokenizer, 512, 0)
    with pytest.raises(HarnessError, match="not found"):
        perplexity.prepare(tmp_path / "missing.txt", smol_tokenizer, 16, 0)


def test_eval_texts_take_shipped_names_paths_and_hub_names(tmp_path):
    from harness.data import EVAL_DIR, eval_text_path

    assert eval_text_path("code_py") == EVAL_DIR / "code_py.txt"
    own = tmp_path / "code_py.txt"
    assert eval_text_path(str(own)) == own  # a path stays a path, even with a shipped file's name
    assert str(eval_text_path("hub:wikitext2")) == "hub:wikitext2"
    assert eval_text_path("no_such_text") == Path("no_such_text")


def test_unknown_eval_text_names_the_shipped_ones():
    from harness.data import eval_text_path

    with pytest.raises(HarnessError, match=r"eval text not found: no_such_text \(.*shipped text: code_py, lang_de"):
        perplexity.read_text(eval_text_path("no_such_text"))
