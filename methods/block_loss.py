"""AWQ's block-output loss: score a scale candidate by the output of the whole block its Linears feed
(the attention or the MLP, nonlinearities included), not by each Linear's own output.

The block's inputs are recorded on a subsample of calibration windows during the pass that collects
the layer's input statistics; the full-precision block output on them is the target. A candidate
replaces the group's weights by ``Q(W·s)/s`` (the inputs stay unscaled, so no fold is needed while
searching) and runs the block again.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from methods.capture import layer_output


@dataclass
class RecordedInputs:
    """The positional and keyword inputs a module received, one entry per calibration batch."""
    calls: list[tuple[tuple, dict]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(_hidden(args, kwargs).shape[:-1].numel() for args, kwargs in self.calls)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first_rows(value, batch: int, rows: int):
    """``value`` cut to its first ``rows`` samples when its leading dimension is the batch."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[:rows].detach()
    if isinstance(value, tuple):
        return tuple(_first_rows(v, batch, rows) for v in value)
    return value


def rows_per_batch(samples: int, n_batches: int) -> int:
    """Windows to keep from each batch so that about ``samples`` windows spread over all batches."""
    return max(1, math.ceil(samples / max(n_batches, 1)))


@contextlib.contextmanager
def record_inputs(layer: nn.Module, names: list[str], rows: int):
    """While active, record the first ``rows`` samples of every call to the submodules ``names``."""
    recorded = {n: RecordedInputs() for n in names}
    hooks = []

    def hook(module, args, kwargs, rec):
        batch = _hidden(args, kwargs).shape[0]
        rec.calls.append((_first_rows(args, batch, rows), {k: _first_rows(v, batch, rows) for k, v in kwargs.items()}))

    for n in names:
        hooks.append(layer.get_submodule(n).register_forward_pre_hook(
            lambda m, a, k, rec=recorded[n]: hook(m, a, k, rec), with_kwargs=True))
    try:
        yield recorded
    finally:
        for h in hooks:
            h.remove()


class BlockLoss:
    """Squared output error of ``block`` on its recorded inputs when the Linears ``linears`` (module
    names relative to ``block``'s layer) carry candidate weights."""

    def __init__(self, block: nn.Module, inputs: RecordedInputs):
        self.block = block
        self.inputs = inputs
        self.targets = [self._run(args, kwargs) for args, kwargs in inputs.calls]

    @torch.no_grad()
    def _run(self, args, kwargs) -> torch.Tensor:
        return layer_output(self.block(*args, **kwargs)).float()

    @torch.no_grad()
    def __call__(self, candidates: dict[nn.Linear, torch.Tensor]) -> float:
        """Σ ‖block(x; candidate weights) - block(x)‖² over the recorded tokens; weights restored."""
        saved = {lin: lin.weight.data for lin in candidates}
        try:
            for lin, w in candidates.items():
                lin.weight.data = w.to(lin.weight.dtype)
            return float(sum((self._run(a, k) - t).pow(2).sum() for (a, k), t in zip(self.inputs.calls, self.targets)))
        finally:
            for lin, w in saved.items():
                lin.weight.data = w
