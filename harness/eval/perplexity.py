"""Token-level perplexity over non-overlapping windows (the AWQ/GPTQ paper protocol).

A text is tokenized once, cut into ``seqlen``-token windows (the remainder is dropped), and each
window is scored independently: every token but the first is predicted. Perplexity is
``exp(total NLL / predicted tokens)``; its standard error comes from the spread of per-window mean
NLLs (delta method), so it reflects text-to-text variation rather than correlated tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import hub_data
from harness.errors import HarnessError
from harness.textfiles import read_text_file
from harness.eval import SuiteOutput
from harness.eval.scoring import window_nll
from harness.eval.views import view


@dataclass
class EvalText:
    task: str  # file stem
    path: str
    windows: torch.Tensor  # [n_windows, seqlen]
    total_tokens: int


def read_text(path: Path) -> str:
    if hub_data.is_hub(path):  # eval.texts=[hub:wikitext2]: the paper protocol's text
        return hub_data.text(str(path))
    if not path.is_file():
        from harness.data import shipped_eval_texts

        names = ", ".join(p.stem for p in shipped_eval_texts())
        raise HarnessError(f"eval text not found: {path} (a path, a hub: name or a shipped text: {names})")
    return read_text_file(path, "eval text")


def make_windows(ids: torch.Tensor, seqlen: int, max_windows: int) -> torch.Tensor:
    n = ids.numel() // seqlen
    if max_windows > 0:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


def prepare(path: Path, tok, seqlen: int, max_windows: int) -> EvalText:
    if seqlen < 2:
        raise HarnessError(f"eval.seqlen must be >= 2 (got {seqlen})")
    ids = torch.tensor(tok(read_text(path), add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < seqlen:
        raise HarnessError(
            f"eval text {path} has {ids.numel()} tokens, too short for one window of eval.seqlen={seqlen}; "
            f"use a longer text or a smaller eval.seqlen"
        )
    return EvalText(path.stem, str(path), make_windows(ids, seqlen, max_windows), ids.numel())


def summarize(nll_per_window: torch.Tensor, tokens_per_window: int) -> dict:
    """Perplexity and its standard error from per-window summed NLLs."""
    n = nll_per_window.numel()
    mean_nll = nll_per_window.sum().item() / (n * tokens_per_window)
    ppl = math.exp(mean_nll)
    if n > 1:
        se_nll = (nll_per_window / tokens_per_window).std(unbiased=True).item() / math.sqrt(n)
        stderr = ppl * se_nll
    else:
        stderr = float("nan")  # one window: no spread to measure
    return {"value": ppl, "stderr": stderr, "n": n, "nll": mean_nll}


def ppl_row(task: str, nll_per_window: torch.Tensor, tokens_per_window: int, seqlen: int) -> dict:
    """The ``ppl_token`` result row every perplexity-scoring suite writes."""
    row = summarize(nll_per_window, tokens_per_window)
    return {**row, "task": task, "metric": "ppl_token", "windows": row["n"], "tokens": row["n"] * tokens_per_window,
            "seqlen": seqlen, "samples": (nll_per_window / tokens_per_window).tolist()}  # for paired bootstrap


def evaluate(model, text: EvalText, batch_size: int, desc: str = "") -> dict:
    per_window = window_nll(model, text.windows, batch_size, desc=desc or text.task)
    seqlen = text.windows.shape[1]
    return ppl_row(text.task, per_window, seqlen - 1, seqlen)


@dataclass
class PerplexitySettings:
    texts: list[str]  # eval.texts: paths, hub: names or shipped names (code_py); empty = every shipped eval text
    seqlen: int
    max_windows: int
    batch_size: int


class PerplexitySuite:
    """Perplexity on every shipped eval text (or ``eval.texts``)."""

    name = "perplexity"

    def settings(self, cfg) -> PerplexitySettings:
        return view(PerplexitySettings, cfg.eval)

    def prepare(self, tok, s: PerplexitySettings) -> list[EvalText]:
        from harness.data import eval_text_path, shipped_eval_texts

        paths = [eval_text_path(t) for t in s.texts] if s.texts else shipped_eval_texts()
        return [prepare(p, tok, s.seqlen, s.max_windows) for p in paths]

    def evaluate(self, model, tok, data: list[EvalText], s: PerplexitySettings, reference=None) -> SuiteOutput:
        rows = []
        for text in data:
            row = evaluate(model, text, s.batch_size, desc=text.task)
            rows.append({**row, "source": text.path})
        return SuiteOutput(rows)


SUITE = PerplexitySuite()
