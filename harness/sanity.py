"""A guard every quantized model (ours or a peer's) passes before its numbers are reported.

Broken quantization rarely crashes: it yields NaN logits or a model that predicts noise, and the
suites would then report meaningless numbers. After quantizing, the harness scores a few windows of
the first perplexity text and stops with one clear error when the logits are not finite or the
perplexity is more than ``sanity.max_ppl_ratio`` times the FP perplexity of the same text (taken
from the FP rows the run already has; never recomputed). Without a perplexity suite there is no FP
number, so the reference is the perplexity of guessing uniformly over the vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.eval.scoring import NonFiniteLogits, scored_batches, targets_of, token_nll


@dataclass
class SanityResult:
    task: str
    windows: int
    ppl: float
    bound: float  # the perplexity above which the model fails
    fp_ppl: float | None  # None when no FP perplexity was available

    def summary(self) -> str:
        ref = f"FP {self.fp_ppl:.2f}" if self.fp_ppl is not None else "no FP perplexity in this run"
        return f"sanity: ppl {self.ppl:.2f} on {self.windows} windows of {self.task} ({ref}; limit {self.bound:.2f})"


def _probe_windows(prepared: dict, tok, cfg):
    """(task, windows [k, seqlen]) from the run's perplexity data, or a shipped text when it has none."""
    texts = prepared.get("perplexity") or []
    if texts:
        text = texts[0]
        return text.task, text.windows[: cfg.sanity.probe_windows]
    from harness.data import shipped_eval_texts
    from harness.eval.perplexity import prepare

    path = shipped_eval_texts()[0]
    text = prepare(path, tok, min(cfg.eval.seqlen, 256), cfg.sanity.probe_windows)
    return text.task, text.windows


def _fp_reference(fp_rows: list[dict], task: str, k: int) -> float | None:
    """FP perplexity of ``task``: over the probe's own windows when per-window samples exist."""
    for r in fp_rows:
        if r.get("suite", "perplexity") == "perplexity" and r.get("metric") == "ppl_token" and r.get("task") == task:
            samples = r.get("samples")
            if samples:
                return math.exp(sum(samples[:k]) / len(samples[:k]))
            return float(r["value"])
    return None


def probe_nll(model, windows: torch.Tensor, batch_size: int) -> tuple[float, bool]:
    """(mean NLL per predicted token, whether every logit was finite)."""
    total, count = 0.0, 0
    try:
        for batch, logits in scored_batches(model, windows, batch_size, desc="sanity probe", progress=False):
            targets = targets_of(batch, None)
            total += token_nll(logits, targets, reduction="sum").item()
            count += targets.numel()
    except NonFiniteLogits:
        return float("nan"), False
    return total / count, True


def check(model, tok, prepared: dict, fp_rows: list[dict], cfg, method: str) -> SanityResult | None:
    """Raise HarnessError unless ``model`` (already quantized by ``method``) looks usable.
    Returns None when the guard is switched off (``sanity.enabled=false``)."""
    if not cfg.sanity.enabled:
        return None
    task, windows = _probe_windows(prepared, tok, cfg)
    nll, finite = probe_nll(model, windows, cfg.eval.batch_size)
    if not finite:
        raise HarnessError(
            f"sanity check failed: method={method} produced NaN/inf logits on {len(windows)} windows of {task}; "
            f"the quantized weights are broken, so no numbers are reported"
        )
    ppl = math.exp(nll)
    fp_ppl = _fp_reference(fp_rows, task, len(windows))
    ratio = cfg.sanity.max_ppl_ratio
    reference = fp_ppl if fp_ppl is not None else float(model.config.vocab_size)
    bound = reference * ratio
    result = SanityResult(task, len(windows), ppl, bound, fp_ppl)
    if not ppl <= bound:
        why = (f"{ppl / fp_ppl:.3g}x the FP perplexity {fp_ppl:.2f} (limit sanity.max_ppl_ratio={ratio:g})"
               if fp_ppl is not None else f"over {ratio:g}x the perplexity of guessing uniformly over {reference:.0f} tokens "
                   f"(no FP perplexity in this run; limit sanity.max_ppl_ratio={ratio:g})")
        raise HarnessError(
            f"sanity check failed: method={method} has perplexity {ppl:.4g} on {len(windows)} windows of {task}, "
            f"{why}; the quantization is broken, so no numbers are reported"
        )
    return result
