"""The scored forward pass every perplexity-like measurement shares.

Token windows go through the model in batches; the logits that predict the scored tokens (every
token but the first, or only the last ``tail`` tokens of each window) are taken in float32 and checked
to be finite. Non-finite logits mean broken weights: :class:`NonFiniteLogits` (a HarnessError) is
raised rather than a perplexity of NaN. The callers then reduce those logits their own way; the
reductions live here too so that each suite's arithmetic (dtype, order of sums) is written once.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.errors import HarnessError


class NonFiniteLogits(HarnessError):
    """The model produced NaN/inf logits: its (quantized) weights are broken."""


def check_finite(logits: torch.Tensor, desc: str) -> None:
    # One reduction instead of an elementwise mask: any NaN or ±inf makes the sum non-finite (and a
    # finite sum would need |logits| near 1e38 / numel to overflow). On the perplexity batches the
    # mask cost more than the cross-entropy.
    if not bool(torch.isfinite(logits.sum())):
        raise NonFiniteLogits(f"the model produced NaN/inf logits ({desc}); the quantized weights are broken")


def targets_of(batch: torch.Tensor, tail: int | None) -> torch.Tensor:
    """The scored tokens of each window: all but the first, or the last ``tail``."""
    return batch[:, 1:] if tail is None else batch[:, -tail:]


@torch.no_grad()
def scored_batches(model, windows: torch.Tensor, batch_size: int, *, tail: int | None = None, desc: str = "",
                   progress: bool = True, upcast: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (batch of windows on the model's device, float32 logits predicting ``targets_of(batch)``).

    Raises NonFiniteLogits at the first batch with a NaN/inf logit. ``upcast=False``: the logits stay
    in the model's dtype, unchecked, for a caller that upcasts and checks them in pieces."""
    starts = range(0, len(windows), batch_size)
    for i in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress):
        batch = windows[i:i + batch_size].to(model.device)
        logits = model(input_ids=batch, use_cache=False).logits
        logits = logits[:, :-1] if tail is None else logits[:, -tail - 1:-1]
        if upcast:
            logits = logits.float()
            check_finite(logits, desc)
        yield batch, logits


def token_nll(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Cross-entropy of ``targets`` [b, T] under ``logits`` [b, T, V] (float32): per token [b, T] for
    ``reduction="none"``, one float32 total for ``"sum"``."""
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)
    return nll.view(targets.shape) if reduction == "none" else nll


NLL_CHUNK_ELEMENTS = 1 << 22  # float32 logits upcast at a time by window_nll (16 MB: reused, not page-faulted)


def chunked_token_nll(logits: torch.Tensor, targets: torch.Tensor, desc: str) -> torch.Tensor:
    """``token_nll`` of logits [b, T, V] in any dtype, upcast to float32 and checked a few rows at a
    time: the same values as one whole-batch upcast, without its hundreds of MB of fresh buffers."""
    rows = max(1, NLL_CHUNK_ELEMENTS // logits.shape[-1])
    nll = torch.empty(targets.shape, device=logits.device)
    for b in range(logits.shape[0]):
        for i in range(0, logits.shape[1], rows):
            piece = logits[b, i:i + rows].float()
            check_finite(piece, desc)
            nll[b, i:i + rows] = token_nll(piece[None], targets[b, i:i + rows][None])[0]
    return nll


def window_nll(model, windows: torch.Tensor, batch_size: int, *, tail: int | None = None,
               desc: str = "") -> torch.Tensor:
    """Summed NLL of each window's scored tokens, shape [n_windows] (float64 sums of float32 NLLs)."""
    out = []
    for batch, logits in scored_batches(model, windows, batch_size, tail=tail, desc=desc, upcast=False):
        out.append(chunked_token_nll(logits, targets_of(batch, tail), desc).double().sum(dim=1).cpu())
    return torch.cat(out)


def window_logprobs(model, windows: torch.Tensor, batch_size: int, desc: str = "") -> Iterator[torch.Tensor]:
    """Each window's next-token log-probabilities [seqlen-1, vocab] (float32, on the CPU), in order."""
    for _, logits in scored_batches(model, windows, batch_size, desc=desc):
        yield from F.log_softmax(logits, dim=-1).cpu()


def gathered_nll(logprobs: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed NLL (float64) of ``targets`` [T] under one window's ``logprobs`` [T, V]."""
    return -logprobs.gather(-1, targets[:, None]).double().sum().item()

