"""Perplexity rows carry per-window mean NLLs whose mean is log(perplexity) (for paired bootstrap)."""
import math

import pytest
import torch

from harness.eval.perplexity import EvalText, evaluate
from tests.conftest import tiny_model


def test_samples_are_per_window_nll():
    g = torch.Generator().manual_seed(0)
    text = EvalText("t", "", torch.randint(0, 1000, (3, 16), generator=g), 48)
    row = evaluate(tiny_model("llama"), text, batch_size=2)
    assert len(row["samples"]) == 3
    assert sum(row["samples"]) / 3 == pytest.approx(math.log(row["value"]), rel=1e-9)
    assert len(set(row["samples"])) == 3
