import copy

import pytest
import torch

import methods
from methods.awq import block_score, search_scale
from methods.block_loss import BlockLoss, record_inputs, rows_per_batch
from methods.capture import LayerwiseRunner, decoder_layers, layer_linears
from methods.mappings import mapping_for
from methods.quantizer import QuantSpec, fake_quantize
from tests.conftest import tiny_model
from tests.methods.helpers import method_cfg, random_calib

SPEC = QuantSpec(bits=3, group_size=16)


def _layer_inputs(model, ids, index=0):
    """The hidden states entering decoder layer ``index`` and the keyword arguments it receives."""
    runner = LayerwiseRunner(model, mapping_for(model), ids, batch_size=len(ids))
    for i in range(index):
        runner.advance(i)
    return runner


@pytest.mark.parametrize("arch,block,group", [("llama", "self_attn", 0), ("llama", "mlp", 2),
                                               ("gemma3_text", "self_attn", 0), ("gemma3_text", "mlp", 2)])
def test_block_loss_equals_a_direct_computation(arch, block, group):
    model = tiny_model(arch, vocab_size=256)
    mapping = mapping_for(model)
    ids = random_calib(n=4, seqlen=24).input_ids
    runner = _layer_inputs(model, ids, index=1)
    layer = decoder_layers(model, mapping)[1]
    linears = layer_linears(layer)
    hidden = runner.hidden[0]
    with record_inputs(layer, [block], rows=3) as rec:
        runner.advance(1)
    assert rec[block].tokens == 3 * 24  # the first 3 of the batch's 4 windows

    g = mapping.scale_groups[group]
    W = torch.cat([linears[n].weight for n in g.linears])
    s = torch.rand(W.shape[1], generator=torch.Generator().manual_seed(0)) + 0.5
    cand = fake_quantize(W * s, SPEC) / s
    got = block_score(layer, g, linears, rec[block])(cand)

    # direct: a copy of the whole decoder layer with the candidate weights, on the first 3 windows;
    # the block's output is read off a hook on the copy
    direct_layer = copy.deepcopy(layer)
    rows = 0
    for n in g.linears:
        lin = direct_layer.get_submodule(n)
        lin.weight.data = cand[rows:rows + lin.out_features].clone()
        rows += lin.out_features
    outs = {}
    for name, mod in (("ref", layer.get_submodule(block)), ("cand", direct_layer.get_submodule(block))):
        mod.register_forward_hook(lambda m, a, o, name=name: outs.__setitem__(name, o[0] if isinstance(o, tuple) else o))
    kwargs = {k: (v[:3] if isinstance(v, torch.Tensor) and v.shape[:1] == (4,) else
                  tuple(t[:3] if t.shape[0] == 4 else t for t in v) if isinstance(v, tuple) else v)
              for k, v in runner.kwargs[1][0].items()}
    with torch.no_grad():
        layer(hidden[:3], **kwargs)
        direct_layer(hidden[:3], **kwargs)
    expected = (outs["cand"] - outs["ref"]).pow(2).sum().item()
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-5)
    # the search leaves the layer's weights as they were
    torch.testing.assert_close(torch.cat([linears[n].weight for n in g.linears]), W, rtol=0, atol=0)


def test_block_loss_is_zero_for_the_unchanged_weights():
    model = tiny_model("qwen3", vocab_size=256)
    runner = _layer_inputs(model, random_calib(n=2, seqlen=16).input_ids)
    layer = decoder_layers(model, runner.mapping)[0]
    with record_inputs(layer, ["mlp"], rows=2) as rec:
        runner.advance(0)
    lin = layer.mlp.up_proj
    assert BlockLoss(layer.mlp, rec["mlp"])({lin: lin.weight.data.clone()}) == 0.0


def test_rows_per_batch_spreads_the_sample_over_batches():
    assert rows_per_batch(8, 4) == 2
    assert rows_per_batch(8, 3) == 3
    assert rows_per_batch(1, 4) == 1
    assert rows_per_batch(8, 0) == 8


def test_block_search_starts_from_rtn_and_never_picks_worse():
    model = tiny_model("llama", vocab_size=256, hidden_size=64)
    mapping = mapping_for(model)
    runner = _layer_inputs(model, random_calib(n=4, seqlen=32).input_ids)
    layer = decoder_layers(model, mapping)[0]
    linears = layer_linears(layer)
    with record_inputs(layer, ["mlp"], rows=4) as rec:
        stats = runner.collect_stats(0, linears, mapping)
    g = mapping.scale_groups[2]
    W = torch.cat([linears[n].weight for n in g.linears])
    score = block_score(layer, g, linears, rec["mlp"])
    scale, best, losses = search_scale(W, stats[g.linears[0]], SPEC, 10, score=score)
    assert losses[0] == pytest.approx(score(fake_quantize(W, SPEC)))  # α = 0 is RTN
    assert losses[best] == losses.min()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_awq_with_block_loss_runs_end_to_end(arch):
    model = tiny_model(arch, vocab_size=256)
    calib = random_calib()
    res = methods.get("awq").quantize(model, calib, method_cfg("awq", n_grid=6, loss="block", block_samples=2))
    assert all("alpha[input_layernorm]" in s for s in res.layers)
    with torch.no_grad():
        assert bool(model(calib.input_ids).logits.isfinite().all())


def test_an_unknown_loss_is_one_line_naming_the_choices():
    with pytest.raises(methods.MethodError, match="method.loss='mse'.*choose one of: linear, block"):
        methods.check_choices(method_cfg("awq", loss="mse"))
