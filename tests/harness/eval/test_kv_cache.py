"""The in-place decoding cache holds exactly what transformers' DynamicLayer holds."""
import copy

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from harness.eval import kv_cache
from harness.eval.kv_cache import InPlaceLayer, decoding_cache
from tests.conftest import tiny_model


def _same(a, b):
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert a.get_seq_length() == b.get_seq_length()


def test_in_place_layer_matches_dynamic_layer_through_growth_selection_and_crop(monkeypatch):
    monkeypatch.setattr(kv_cache, "SPARE_POSITIONS", 3)  # every few steps outgrows the buffer
    torch.manual_seed(0)
    ours, ref = InPlaceLayer(), DynamicLayer()
    for n in [5, 1, 1, 4, 1, 1, 1]:
        k, v = torch.randn(4, 2, n, 8), torch.randn(4, 2, n, 6)
        for layer in (ours, ref):
            got = layer.update(k, v)
        assert torch.equal(got[0], ours.keys)
        _same(ours, ref)
    keep = torch.tensor([0, 2, 3])
    ours.reorder_cache(keep), ref.reorder_cache(keep)
    _same(ours, ref)
    snapshot = copy.deepcopy(ours)
    for layer in (ours, ref):
        layer.update(torch.ones(3, 2, 2, 8), torch.ones(3, 2, 2, 6))
        layer.crop(-3)
    _same(ours, ref)
    assert snapshot.get_seq_length() == 14 and not torch.equal(snapshot.keys[:, :, -1], ours.keys[:, :, -1])


def test_decoding_cache_replaces_only_full_attention_layers():
    layers = decoding_cache(tiny_model("gemma3_text", num_hidden_layers=6)).layers  # every 6th is global
    assert {type(layer) for layer in layers} == {InPlaceLayer, DynamicSlidingWindowLayer}
    assert all(type(layer) is InPlaceLayer for layer in decoding_cache(tiny_model("llama")).layers)
