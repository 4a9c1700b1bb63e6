"""Layer-by-layer calibration: cache one decoder layer's inputs at a time (AWQ and GPTQ share this).

``LayerwiseRunner`` feeds the calibration windows to the first decoder layer, records the keyword
arguments every layer receives (position embeddings, masks: they differ per layer type in Gemma 3),
and then walks the layers: for each one it can accumulate input statistics of its Linears
(``collect_stats``) and advance the cached hidden states through it (``advance``). Memory stays at
about one layer's activations.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn

from methods import onload
from methods.mappings import ArchMapping


_FORWARD_DTYPE: ContextVar[torch.dtype | None] = ContextVar("calibration_forward_dtype", default=None)


@contextmanager
def forward_dtype(dtype: torch.dtype | None):
    """While active, the layer-by-layer calibration passes run under autocast to ``dtype`` (the
    compute dtype: bf16 matmuls are several times faster where the hardware has them). The model
    keeps its fp32 master weights for the quantization arithmetic, and the statistics accumulate in
    fp32. ``None`` or fp32: plain fp32 passes."""
    token = _FORWARD_DTYPE.set(dtype)
    try:
        yield
    finally:
        _FORWARD_DTYPE.reset(token)


def current_forward_dtype() -> torch.dtype | None:
    """The dtype set by ``forward_dtype`` (None outside it): what peers given a choice should run in."""
    return _FORWARD_DTYPE.get()


def _in_forward_dtype(device: torch.device):
    dtype = current_forward_dtype()
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class _Recorder(nn.Module):
    """Stands in for a decoder layer during the first pass: records its inputs, returns them unchanged."""

    def __init__(self, keep_hidden: bool):
        super().__init__()
        self.keep_hidden = keep_hidden
        self.hidden: list[torch.Tensor] = []
        self.kwargs: list[dict] = []

    def forward(self, hidden_states, *args, **kwargs):
        if self.keep_hidden:
            self.hidden.append(hidden_states.detach())
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "cache")}
        kwargs["use_cache"] = False
        self.kwargs.append(kwargs)
        return hidden_states


GRAM_BLOCKS = 4  # column blocks of the Gram accumulation: the upper triangle is 10 of the 16 block products


@dataclass
class InputStats:
    """Running statistics of a Linear's input: Gram matrix XᵀX, Σ|x| per channel, token count.

    The Gram matrix is symmetric, so ``add`` accumulates only its upper block triangle (37% less
    arithmetic than the full product, 27–36% less time on this project's CPU; after the forward
    passes it is calibration's largest cost) and ``gram`` mirrors it on first read."""

    partial_gram: torch.Tensor  # the upper block triangle is current; the lower one is stale until read
    abs_sum: torch.Tensor
    tokens: int = 0
    mirrored: bool = True

    @classmethod
    def empty(cls, width: int) -> "InputStats":
        return cls(torch.zeros(width, width), torch.zeros(width))

    def _edges(self) -> list[int]:
        n = self.partial_gram.shape[0]
        nb = GRAM_BLOCKS if n >= 64 * GRAM_BLOCKS else 1
        return [n * i // nb for i in range(nb + 1)]

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if self.partial_gram.device != x.device:  # statistics live where the activations are (GPU runs)
            self.partial_gram, self.abs_sum = self.partial_gram.to(x.device), self.abs_sum.to(x.device)
        e = self._edges()
        for a, b in zip(e, e[1:]):
            self.partial_gram[a:b, a:].addmm_(x[:, a:b].T, x[:, a:])
        self.mirrored = len(e) == 2
        self.abs_sum += x.abs().sum(dim=0)
        self.tokens += x.shape[0]

    @property
    def gram(self) -> torch.Tensor:
        """XᵀX [in, in]; the same tensor on every read, so in-place changes stick."""
        if not self.mirrored:
            e = self._edges()
            for i, (a, b) in enumerate(zip(e, e[1:])):
                for c, d in zip(e[i + 1 : -1], e[i + 2 :]):
                    self.partial_gram[c:d, a:b] = self.partial_gram[a:b, c:d].T
            self.mirrored = True
        return self.partial_gram

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.tokens, 1)


def decoder_layers(model: nn.Module, mapping: ArchMapping) -> nn.ModuleList:
    return operator.attrgetter(mapping.layers)(model)


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}


def input_set_stages(linears: dict[str, nn.Linear], mapping: ArchMapping) -> list[dict[str, nn.Linear]]:
    """The layer's Linears split by shared input, in the order the layer runs them (the mapping's input
    sets, then any other Linear alone): the stages of a "true-sequential" pass, where each input set's
    statistics are collected after the sets before it are quantized."""
    stages, placed = [], set()
    for names in mapping.input_sets:
        stage = {n: linears[n] for n in names if n in linears}
        if stage:
            stages.append(stage)
            placed |= set(stage)
    return stages + [{n: lin} for n, lin in linears.items() if n not in placed]


def layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _Collected(Exception):
    """Raised by the statistics hooks once every input of a layer is recorded (the forward pass stops)."""


@dataclass
class LayerwiseRunner:
    model: nn.Module
    mapping: ArchMapping
    input_ids: torch.Tensor  # [n_samples, seqlen]
    batch_size: int = 8
    hidden: list[torch.Tensor] = field(default_factory=list)  # current layer's inputs, per batch
    kwargs: list[list[dict]] = field(default_factory=list)  # [layer][batch]

    def __post_init__(self):
        self.layers = decoder_layers(self.model, self.mapping)
        self._record_inputs()

    @torch.no_grad()
    def _record_inputs(self) -> None:
        originals = list(self.layers)
        recorders = [_Recorder(keep_hidden=(i == 0)) for i in range(len(originals))]
        base = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        try:
            for i, r in enumerate(recorders):
                self.layers[i] = r
            with _in_forward_dtype(self.device):
                for b in range(0, len(self.input_ids), self.batch_size):
                    base(input_ids=self.input_ids[b : b + self.batch_size].to(self.device), use_cache=False)
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer
        self.hidden = recorders[0].hidden
        self.kwargs = [r.kwargs for r in recorders]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def collect_stats(self, index: int, linears: dict[str, nn.Linear], mapping: ArchMapping,
                      also_advance: bool = False) -> dict[str, InputStats]:
        """Input statistics of each Linear of layer ``index`` (shared inputs computed once).
        With ``also_advance`` the same forward pass also moves the hidden states to the next layer;
        without it the pass stops at the last input set's first call (its Linear and what follows
        never run), so a Linear called twice in one layer pass would be counted once."""
        stats: dict[str, InputStats] = {}
        firsts = []
        for name, lin in linears.items():
            shared = [n for n in mapping.input_set_of(name) if n in linears]
            if shared[0] != name:
                continue  # the first Linear of a shared-input set collects for all of them
            st = InputStats.empty(lin.in_features)
            for n in shared:
                stats[n] = st
            firsts.append((lin, st))
        seen: set[int] = set()

        def collect(module, args, st):
            st.add(args[0])
            seen.add(id(st))
            if not also_advance and len(seen) == len(firsts):
                raise _Collected  # nothing after the last input is needed: skip the rest of the layer

        hooks = [lin.register_forward_pre_hook(lambda m, args, st=st: collect(m, args, st)) for lin, st in firsts]
        outs = []
        try:
            with onload.held(self.layers[index], write=False):  # one materialisation for all batches
                for b in range(len(self.hidden)):
                    seen.clear()
                    try:
                        outs.append(self._forward(index, b))
                    except _Collected:
                        pass
        finally:
            for h in hooks:
                h.remove()
        if also_advance:
            self.hidden = outs
        return stats

    @torch.no_grad()
    def advance(self, index: int) -> None:
        with onload.held(self.layers[index], write=False):
            self.hidden = [self._forward(index, b) for b in range(len(self.hidden))]

    def _forward(self, index: int, batch: int) -> torch.Tensor:
        with _in_forward_dtype(self.device):
            return layer_output(self.layers[index](self.hidden[batch], **self.kwargs[index][batch]))
