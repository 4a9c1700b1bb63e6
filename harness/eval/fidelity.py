"""Fidelity of a (quantized) model to the FP model on a suite's own (prompt, reference answer) pairs.

Teacher forcing: each rendered prompt is followed by its reference answer (HumanEval's canonical
solution, the expected JSON, ...) and both models are scored at every answer position.

What the FP run caches (``fp_reference``): the FP model's top-``k`` log-probabilities and token ids at
each answer position, not the full distribution. Full float32 log-softmax rows cost vocab × 4 bytes
(196 kB for a 49k vocabulary) per position — about 4 GB for HumanEval's ~20k answer tokens — while
top-64 costs 512 B per position (~10 MB). KL is then computed on the coarse-grained distribution
{top-k tokens of FP, everything else}:

    KL_k = Σ_{v∈S} P(v) log(P(v)/Q(v)) + P(rest) log(P(rest)/Q(rest))

By the data-processing inequality KL_k ≤ KL(P‖Q), with equality when the quantized model spreads
the tail like FP does; the tail mass of an instruct model's top-64 is small, so the gap is small.
The tests check KL_k against the exact KL.

Every metric above is a per-item mean (item = one prompt); rows carry ``samples`` (per-item values in
item order), ``n`` (items) and a standard error over items.

Per-token statistics (llama.cpp's ``--kl-divergence`` report) are added per task from the same
forward pass, over all answer tokens of the task, as summary rows without samples (per-token samples
would bloat the store): ``kl_tok_mean`` and the quantiles ``kl_tok_p50``, ``kl_tok_p99``,
``kl_tok_p999`` of the per-token KL_k; ``top1_same_tok`` (share of answer tokens whose argmax is FP's
top-1); ``dp_ref_tok_mean``, ``dp_ref_tok_p01``, ``dp_ref_tok_p99``: the change Q(y) − P(y) of the
probability of the reference (teacher-forced) token y. P(y) is known only where y is among FP's
cached top-k; below the k-th it is merely bounded, so Δp is taken over those positions only and
``dp_ref_tok_covered`` stores the share of answer tokens they make up (near 1 for a trained model's
own answers; a low share says Δp describes the confident positions only). ``n`` is the number of
tokens behind each row; means carry the standard error of the mean over tokens (binomial for the
shares), quantiles a NaN stderr; quantiles interpolate linearly (numpy's default), in float64. These
rows are descriptive (``harness.results.is_descriptive``): tokens of one answer are correlated, so a
standard error over tokens is too small to judge variants by; the per-item rows do that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.eval.generation import encode_answer, encode_prompt, positions_kept
from harness.eval.scoring import check_finite


@dataclass
class FidelityReference:
    """Per item: FP top-k log-probs and ids at each answer position, shapes [answer_len, k]."""
    logprobs: list[torch.Tensor]  # float32
    indices: list[torch.Tensor]  # int32
    top_k: int


def metric_row(task: str, metric: str, samples: Sequence[float], binary: bool = False) -> dict:
    """A result row whose value is the mean of per-item ``samples``. Binary metrics (pass@1, exact
    match) get the binomial standard error sqrt(p(1-p)/n); others the standard error of the mean."""
    xs = [float(x) for x in samples]
    n = len(xs)
    if n == 0:
        return {"task": task, "metric": metric, "value": float("nan"), "stderr": float("nan"), "n": 0,
                "samples": []}
    mean = sum(xs) / n
    if binary:
        stderr = math.sqrt(mean * (1 - mean) / n)
    elif n > 1:
        stderr = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)
    else:
        stderr = float("nan")
    return {"task": task, "metric": metric, "value": mean, "stderr": stderr, "n": n, "samples": xs}


def _encode_pairs(tok, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(ids, answer_start) per pair; prompt and answer are tokenized apart so the boundary is exact."""
    out = []
    for prompt, answer in pairs:
        p = encode_prompt(tok, prompt)
        if not p:
            raise HarnessError("fidelity pairs need a non-empty prompt and reference answer")
        out.append((p + encode_answer(tok, answer), len(p)))
    return out


@torch.no_grad()
def answer_logprobs(model, tok, pairs: Sequence[tuple[str, str]], batch_size: int, desc: str = "fidelity"):
    """Yield (log-softmax rows [answer_len, vocab], answer token ids [answer_len]) per pair, in order.

    The standalone teacher-forced pass, for pairs that are not also decoded (the generation suites
    get the same log-probs from their decoding's prompt pass: ``greedy_generate(answers=...)``).
    Batches are right-padded: causal attention keeps real positions independent of the padding.
    """
    encoded = _encode_pairs(tok, pairs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, unit="batch", leave=False):
        chunk = encoded[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, _) in enumerate(chunk):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        # the vocabulary projection runs only from the earliest answer start on: prompt positions'
        # logits would be discarded, and at 49k vocabulary they cost a fifth of the forward pass
        first = min(a0 for _, a0 in chunk) - 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False,
                       **positions_kept(model, width - first)).logits
        offset = width - logits.shape[1]  # 0 where the model computes every position
        for i, (row, a0) in enumerate(chunk):
            # logits at position t predict token t+1
            yield F.log_softmax(logits[i, a0 - 1 - offset:len(row) - 1 - offset].float(), dim=-1).cpu(), torch.tensor(row[a0:])


def _nll(lp: torch.Tensor, target: torch.Tensor) -> float:
    return -lp.gather(-1, target[:, None].long()).mean().item()


class FpScores:
    """The FP model's per-item scores, added in any order (``add`` is an ``AnswerSink``): the top-k
    log-probs and ids to cache at each answer position, and the answer NLL."""

    def __init__(self, n: int, top_k: int, desc: str = "fidelity FP"):
        self.top_k, self.desc = top_k, desc
        self.logprobs: list = [None] * n
        self.indices: list = [None] * n
        self.nll: list = [None] * n

    def add(self, i: int, lp: torch.Tensor, target: torch.Tensor) -> None:
        check_finite(lp, self.desc)
        vals, ind = lp.topk(min(self.top_k, lp.shape[-1]), dim=-1)
        self.logprobs[i], self.indices[i], self.nll[i] = vals.clone(), ind.to(torch.int32), _nll(lp, target)

    def result(self, task: str) -> tuple[list[dict], FidelityReference]:
        """(``answer_nll`` rows for ``task``, the FidelityReference to cache)."""
        if any(x is None for x in self.nll):
            raise RuntimeError("FP fidelity: some items were never scored")
        return [metric_row(task, "answer_nll", self.nll)], FidelityReference(self.logprobs, self.indices, self.top_k)


def fp_reference(model, tok, pairs: Sequence[tuple[str, str]], *, task: str, top_k: int, batch_size: int):
    """Score the FP model: returns (``answer_nll`` rows for ``task``, FidelityReference to cache)."""
    scores = FpScores(len(pairs), top_k)
    for i, (lp, target) in enumerate(answer_logprobs(model, tok, pairs, batch_size, desc="fidelity FP")):
        scores.add(i, lp, target)
    return scores.result(task)


def coarse_kl(p_top: torch.Tensor, p_idx: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL between {top-k of P, rest} coarse-grainings of P and Q, per position.

    p_top: P's top-k log-probs [T, k]; p_idx: their token ids [T, k]; q_log: Q's full log-probs [T, V]."""
    q_top = q_log.gather(-1, p_idx.long())
    p_mass, q_mass = p_top.exp(), q_top.exp()
    kl = (p_mass * (p_top - q_top)).sum(-1)
    p_rest = (1 - p_mass.sum(-1)).clamp(min=0)
    q_rest = (1 - q_mass.sum(-1)).clamp(min=1e-30)
    tail = torch.where(p_rest > 1e-12, p_rest * (p_rest.clamp(min=1e-30).log() - q_rest.log()), torch.zeros_like(p_rest))
    return (kl + tail).clamp(min=0)


KL_QUANTILES = (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))  # metric suffix, percentile
DP_QUANTILES = (("p01", 1.0), ("p99", 99.0))


@dataclass
class TokenValues:
    """One item's per-answer-token values: ``kl`` (KL_k to FP, float32 as computed), ``same`` (argmax
    is FP's top-1), ``covered`` (the reference token is in FP's top-k) and ``dp`` (Q(y) − P(y) of the
    reference token y at the covered positions only, float64)."""
    kl: torch.Tensor
    same: torch.Tensor
    covered: torch.Tensor
    dp: torch.Tensor


def token_values(lp: torch.Tensor, target: torch.Tensor, p_top: torch.Tensor, p_idx: torch.Tensor) -> TokenValues:
    """lp: the model's log-probs [T, V]; target: the reference token ids [T]; p_top, p_idx: FP's top-k
    log-probs and ids [T, k] (ids are distinct per row, so at most one of them is the reference)."""
    match = p_idx.long() == target[:, None].long()
    covered = match.any(-1)
    p_ref = (p_top.double().exp() * match).sum(-1)
    q_ref = lp.gather(-1, target[:, None].long())[:, 0].double().exp()
    return TokenValues(coarse_kl(p_top, p_idx, lp), lp.argmax(-1) == p_idx[:, 0].long(), covered,
                       (q_ref - p_ref)[covered])


def summary_row(task: str, metric: str, values: np.ndarray, binary: bool = False) -> dict:
    """A row whose value is the mean of ``values`` (float64), without samples; stderr as metric_row's."""
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if binary and n:
        stderr = math.sqrt(mean * (1 - mean) / n)
    else:
        stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"task": task, "metric": metric, "value": mean, "stderr": stderr, "n": n}


def quantile_row(task: str, metric: str, values: np.ndarray, percentile: float) -> dict:
    """A row whose value is a quantile of ``values`` (linear interpolation, numpy's default); stderr NaN."""
    value = float(np.percentile(values, percentile)) if len(values) else float("nan")
    return {"task": task, "metric": metric, "value": value, "stderr": float("nan"), "n": len(values)}


def _cat(parts: Sequence[torch.Tensor]) -> np.ndarray:
    return torch.cat(list(parts)).double().numpy() if len(parts) else np.zeros(0)


def token_rows(task: str, values: Sequence[TokenValues]) -> list[dict]:
    """The per-token statistics of ``task`` over all answer tokens of its items (see the module doc)."""
    kl, same = _cat([v.kl for v in values]), _cat([v.same for v in values])
    dp, covered = _cat([v.dp for v in values]), _cat([v.covered for v in values])
    rows = [summary_row(task, "kl_tok_mean", kl)]
    rows += [quantile_row(task, f"kl_tok_{name}", kl, q) for name, q in KL_QUANTILES]
    rows += [summary_row(task, "top1_same_tok", same, binary=True), summary_row(task, "dp_ref_tok_mean", dp)]
    rows += [quantile_row(task, f"dp_ref_tok_{name}", dp, q) for name, q in DP_QUANTILES]
    return rows + [summary_row(task, "dp_ref_tok_covered", covered, binary=True)]


class FidelityScores:
    """A quantized model's per-item scores against the FP ``reference``, added in any order (``add``
    is an ``AnswerSink``); ``rows`` as :func:`fidelity_rows` documents."""

    def __init__(self, reference: FidelityReference, n: int, desc: str = "fidelity"):
        if len(reference.logprobs) != n:
            raise HarnessError(f"FP fidelity reference has {len(reference.logprobs)} items, the suite has {n}; "
                               f"delete the FP reference cache and rerun")
        self.reference, self.desc = reference, desc
        self.values: list = [None] * n
        self.nll: list = [None] * n

    def add(self, i: int, lp: torch.Tensor, target: torch.Tensor) -> None:
        check_finite(lp, self.desc)
        self.values[i] = token_values(lp, target, self.reference.logprobs[i], self.reference.indices[i])
        self.nll[i] = _nll(lp, target)

    def rows(self, task: str) -> list[dict]:
        if any(x is None for x in self.nll):
            raise RuntimeError("fidelity: some items were never scored")
        kl = [v.kl.mean().item() for v in self.values]
        agree = [v.same.double().mean().item() for v in self.values]
        return [metric_row(task, "answer_nll", self.nll), metric_row(task, "kl_to_fp", kl),
                metric_row(task, "top1_agree_fp", agree)] + token_rows(task, self.values)


def fidelity_rows(model, tok, pairs: Sequence[tuple[str, str]], reference: FidelityReference | None, *,
                  task: str, batch_size: int) -> list[dict]:
    """Rows for ``task``: ``answer_nll`` always; with an FP ``reference`` also ``kl_to_fp`` (mean over
    answer tokens of KL(FP‖model), nats) and ``top1_agree_fp`` (share of answer positions whose argmax
    equals FP's), per item, then the per-token statistics of :func:`token_rows`."""
    if reference is None:
        return fp_reference(model, tok, pairs, task=task, top_k=1, batch_size=batch_size)[0]
    scores = FidelityScores(reference, len(pairs))
    for i, (lp, target) in enumerate(answer_logprobs(model, tok, pairs, batch_size, desc="fidelity")):
        scores.add(i, lp, target)
    return scores.rows(task)


def exact_match_rows(outputs: Sequence[str], fp_outputs: Sequence[str] | None, *, task: str) -> list[dict]:
    """Share of greedy outputs identical (up to surrounding whitespace) to the FP model's; none on the
    FP run itself."""
    if fp_outputs is None:
        return []
    if len(outputs) != len(fp_outputs):
        raise HarnessError(f"FP outputs have {len(fp_outputs)} items, the suite has {len(outputs)}; "
                           f"delete the FP reference cache and rerun")
    return [metric_row(task, "exact_match_fp", [float(a.strip() == b.strip()) for a, b in zip(outputs, fp_outputs)],
                       binary=True)]
