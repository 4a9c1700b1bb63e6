"""The guard every model's numbers pass before they count — the FP model's as well as each variant's.

Broken weights rarely crash: they yield NaN logits or a model that predicts noise, and the suites
would then report meaningless numbers (and the report would recommend them). The guard scores a
small fixed probe (the first windows of the run's first perplexity text, or a shipped text when the
run has no perplexity suite):
- once on the FP model, when the session opens: its logits must be finite and its perplexity at most
  ``sanity.fp_max_vs_uniform`` times that of guessing uniformly over the vocabulary (a randomly
  initialised model sits at about 1x; broken weights at thousands of times);
- on every variant after quantizing: finite, and at most ``sanity.max_ppl_ratio`` times FP's
  perplexity on the same probe;
- on every variant's evaluated rows: no perplexity of any suite (multilingual, long_context, ...)
  above ``sanity.max_ppl_ratio`` times FP's perplexity of the same suite and task.
Every failure is one line naming the model that failed (FP or the variant) and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness import results
from harness.errors import HarnessError
from harness.eval.scoring import NonFiniteLogits, scored_batches, targets_of, token_nll
from methods.fp import FP


@dataclass
class SanityResult:
    task: str
    windows: int
    ppl: float
    bound: float  # the perplexity above which the model fails
    fp_ppl: float

    def summary(self) -> str:
        return (f"sanity: ppl {self.ppl:.2f} on {self.windows} window{'s' if self.windows != 1 else ''} of {self.task} "
                f"(FP {self.fp_ppl:.2f}; limit {self.bound:.2f})")


def probe_windows(prepared: dict, tok, cfg) -> tuple[str, torch.Tensor]:
    """(task, windows [k, seqlen]) from the run's perplexity data, or a shipped text when it has none."""
    texts = prepared.get("perplexity") or []
    if texts:
        return texts[0].task, texts[0].windows[: cfg.sanity.probe_windows]
    from harness.data import shipped_eval_texts
    from harness.eval.perplexity import prepare

    text = prepare(shipped_eval_texts()[0], tok, min(cfg.eval.seqlen, 256), cfg.sanity.probe_windows)
    return text.task, text.windows


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


def failed(who: str, what: str, why: str) -> HarnessError:
    return HarnessError(f"sanity check failed: {who} {what}; {why}, so no numbers are reported")


@dataclass
class Guard:
    task: str
    windows: torch.Tensor
    batch_size: int
    max_ratio: float
    fp_ppl: float

    @classmethod
    def open(cls, model, tok, prepared: dict, cfg, model_name: str) -> "Guard | None":
        """Score the probe on the FP model and refuse a broken one. None when the guard is off."""
        if not cfg.sanity.enabled:
            return None
        task, windows = probe_windows(prepared, tok, cfg)
        who = f"the FP model ({FP}, model={model_name})"
        nll, finite = probe_nll(model, windows, cfg.eval.batch_size)
        if not finite:
            raise failed(who, f"produced NaN/inf logits on {len(windows)} windows of {task}",
                         "its own weights are broken (not the quantization)")
        ppl, vocab = math.exp(nll), int(model.config.vocab_size)
        ceiling = cfg.sanity.fp_max_vs_uniform * vocab
        if not ppl <= ceiling:
            raise failed(who, f"has perplexity {ppl:.4g} on {len(windows)} windows of {task}",
                         f"over {cfg.sanity.fp_max_vs_uniform:g}x the perplexity of guessing uniformly over {vocab} "
                         f"tokens (limit sanity.fp_max_vs_uniform): its own weights are broken (not the quantization)")
        return cls(task, windows, cfg.eval.batch_size, cfg.sanity.max_ppl_ratio, ppl)

    def check_model(self, model, method: str) -> SanityResult:
        """A quantized variant on the probe, bounded by FP's perplexity on the same windows."""
        nll, finite = probe_nll(model, self.windows, self.batch_size)
        who = f"method={method}"
        if not finite:
            raise failed(who, f"produced NaN/inf logits on {len(self.windows)} windows of {self.task}",
                         "the quantized weights are broken")
        result = SanityResult(self.task, len(self.windows), math.exp(nll), self.fp_ppl * self.max_ratio, self.fp_ppl)
        if not result.ppl <= result.bound:
            raise failed(who, f"has perplexity {result.ppl:.4g} on {result.windows} windows of {self.task}",
                         f"{result.ppl / self.fp_ppl:.3g}x the FP perplexity {self.fp_ppl:.2f} "
                         f"(limit sanity.max_ppl_ratio={self.max_ratio:g}): the quantization is broken")
        return result

    def check_rows(self, rows: list[dict], fp_rows: list[dict], method: str) -> None:
        """Every perplexity a suite computed for the variant, bounded by FP's of the same suite and task."""
        fp = {(r["suite"], r["task"], r["metric"]): r["value"] for r in fp_rows if results.is_perplexity(r["metric"])}
        for r in rows:
            ref = fp.get((r.get("suite"), r.get("task"), r.get("metric")))
            if ref is None or not ref > 0:
                continue
            if not r["value"] <= ref * self.max_ratio:  # NaN fails too
                raise failed(f"method={method}", f"has {r['metric']} {r['value']:.4g} on {r['suite']}/{r['task']}",
                             f"{r['value'] / ref:.3g}x the FP value {ref:.2f} (limit sanity.max_ppl_ratio="
                             f"{self.max_ratio:g}): the quantization is broken")
