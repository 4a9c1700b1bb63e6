"""The KV cache greedy decoding uses: transformers' DynamicCache, with its full-attention layers
writing in place.

A DynamicLayer appends each step's keys and values with ``torch.cat``, which copies the whole cache
at every step: at a 700-token prompt and batch 4 that is ~130 MB a step for a 135M model, about a
tenth of the step on two CPU cores. :class:`InPlaceLayer` keeps room for more positions and writes
only the new one. Sliding-window layers keep transformers' own (bounded) layer.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_POSITIONS = 256  # room added whenever a layer's buffer fills up


class InPlaceLayer(DynamicLayer):
    """A DynamicLayer whose ``keys``/``values`` are views of larger buffers."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._length = 0

    def _publish(self) -> None:
        self.keys = self._k[:, :, :self._length]
        self.values = self._v[:, :, :self._length]

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int) -> None:
        if self._k is not None and length <= self._k.shape[-2]:
            return
        b, h, _, dk = key_states.shape
        k = key_states.new_empty((b, h, length + SPARE_POSITIONS, dk))
        v = value_states.new_empty((b, h, length + SPARE_POSITIONS, value_states.shape[-1]))
        if self._length:
            k[:, :, :self._length] = self.keys
            v[:, :, :self._length] = self.values
        self._k, self._v = k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        self._reserve(key_states, value_states, end)
        self._k[:, :, self._length:end] = key_states
        self._v[:, :, self._length:end] = value_states
        self._length = end
        self._publish()
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized and self._k is not None:
            self._length = max(0, self._length + tokens_to_remove)
            self._publish()

    def _select(self, pick) -> None:
        if self.is_initialized and self._k is not None:
            self._k, self._v = pick(self._k), pick(self._v)
            self._publish()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select(lambda t: t[indices])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        super().reset()
        self._k = self._v = None
        self._length = 0


def decoding_cache(model) -> DynamicCache:
    """A DynamicCache for ``model`` (sliding-window layers where its config has them) whose
    full-attention layers are :class:`InPlaceLayer`."""
    cache = DynamicCache(config=model.config)
    cache.layers = [InPlaceLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
