from types import SimpleNamespace

import pytest
import torch

import methods
from methods.registry import UnknownMethodError
from methods.targets import target_linears
from tests.conftest import tiny_model


def test_miss_error_lists_available_methods():
    with pytest.raises(UnknownMethodError) as e:
        methods.get("awk")
    assert "unknown method 'awk'" in str(e.value) and "fp" in str(e.value) and "rtn" in str(e.value)


def rtn_cfg(**kw):
    base = dict(bits=4, group_size=16, symmetric=False, quantize_lm_head=False)
    base.update(kw)
    return SimpleNamespace(**base)


def test_rtn_quantizes_decoder_linears_and_leaves_head_and_embeddings():
    model = tiny_model("llama", tie_word_embeddings=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = methods.get("rtn").quantize(model, None, rtn_cfg())
    names = {s["layer"] for s in res.layers}
    assert names == set(target_linears(model)) and "lm_head" not in names and len(names) == 2 * 7
    after = model.state_dict()
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    for n in names:
        w = after[n + ".weight"]
        assert not torch.equal(w, before[n + ".weight"])
        assert all(row.unique().numel() <= 16 for row in w.view(w.shape[0], -1, 16).reshape(-1, 16))


def test_rtn_can_quantize_a_tied_head_without_touching_embeddings():
    model = tiny_model("llama", tie_word_embeddings=True)
    emb = model.get_input_embeddings().weight.clone()
    methods.get("rtn").quantize(model, None, rtn_cfg(quantize_lm_head=True))
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert not torch.equal(model.get_output_embeddings().weight, emb)


def test_fp_is_a_no_op():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    methods.get("fp").quantize(model, None, rtn_cfg())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
