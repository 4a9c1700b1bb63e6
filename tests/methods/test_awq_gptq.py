import pytest
import torch

import methods
from methods.awq import search_scale
from methods.capture import InputStats, input_set_stages, layer_linears
from methods.gptq import gptq_quantize
from methods.mappings import mapping_for
from methods.quantizer import QuantSpec, fake_quantize
from methods.targets import target_linears
from tests.conftest import tiny_model
from tests.methods.test_awq import _planted_model
from tests.methods.helpers import method_cfg, random_calib


def _logit_error(name, **kw):
    """Mean squared logit error against the FP model on held-out windows."""
    model = _planted_model()
    ids = random_calib(n=4, seqlen=64, seed=1).input_ids
    with torch.no_grad():
        ref = model(ids).logits
    methods.get(name).quantize(model, random_calib(n=8, seqlen=64), method_cfg(name, **kw))
    with torch.no_grad():
        return (model(ids).logits - ref).pow(2).mean().item()


def test_on_a_toy_layer_scaling_then_gptq_beats_either_alone():
    """One Linear, salient input channels and correlated inputs: the AWQ scale and GPTQ on the scaled
    weight with the scaled inputs' Hessian (what awq_gptq does per Linear)."""
    gen = torch.Generator().manual_seed(0)
    tokens, in_f, out_f = 2048, 128, 64
    mix = torch.randn(in_f, in_f, generator=gen) / in_f**0.5 + torch.eye(in_f)
    x = torch.randn(tokens, in_f, generator=gen) @ mix
    x[:, [3, 40, 77, 101]] *= 20
    w = torch.randn(out_f, in_f, generator=gen) * 0.05
    st = InputStats.empty(in_f)
    st.add(x)
    spec = QuantSpec(3, 32)

    def err(wq):
        return (x @ (wq - w).T).pow(2).mean().item()

    s, _, _ = search_scale(w, st, spec, n_grid=20)
    awq = fake_quantize(w * s, spec) / s
    H = 2 / tokens * st.gram
    gptq = gptq_quantize(w, H, spec, block_size=32, damp_percent=0.1, act_order="static")[0].dequantize()
    Hs = H / (s.view(-1, 1) * s.view(1, -1))  # the Hessian of the scaled inputs x / s
    both = gptq_quantize(w * s, Hs, spec, block_size=32, damp_percent=0.1, act_order="static")[0].dequantize() / s
    assert err(both) < min(err(awq), err(gptq)), (err(both), err(awq), err(gptq))
    assert max(err(awq), err(gptq)) < err(fake_quantize(w, spec))


def test_awq_gptq_beats_awq_and_gptq_alone_on_planted_salient_channels():
    awq = _logit_error("awq", n_grid=10, clip=False)
    gptq = _logit_error("gptq", block_size=32)
    both = _logit_error("awq_gptq", n_grid=10, block_size=32)
    rtn = _logit_error("rtn")
    assert max(awq, gptq) < rtn
    assert both < min(awq, gptq), (both, awq, gptq)


def test_awq_gptq_with_clip_and_block_loss_quantizes_every_target():
    model = tiny_model("gemma3_text", vocab_size=256)
    calib = random_calib()
    res = methods.get("awq_gptq").quantize(model, calib, method_cfg("awq_gptq", n_grid=6, clip=True, loss="block",
                                                                    block_samples=2, block_size=16))
    assert set(res.qweights) == set(target_linears(model))
    for name, lin in target_linears(model).items():
        torch.testing.assert_close(lin.weight, res.qweights[name].dequantize(), rtol=0, atol=0)
    assert all("alpha[input_layernorm]" in s and s["gptq_loss"] > 0 for s in res.layers)


def test_awq_gptq_is_always_sequential():
    import pytest

    with pytest.raises(methods.MethodError, match="always calibrates"):
        methods.get("awq_gptq").check_config(method_cfg("awq_gptq", sequential=False))


def _quantized_tiny(name, **kw):
    model = tiny_model("llama", vocab_size=256, num_key_value_heads=4)  # MHA: v→o folds too
    res = methods.get(name).quantize(model, random_calib(), method_cfg(name, n_grid=6, block_size=16, **kw))
    return model, res


@pytest.mark.parametrize("name", ["gptq", "awq_gptq"])
def test_true_sequential_feeds_each_input_set_from_the_sets_quantized_before_it(name):
    (ts, ts_res), (one, _) = _quantized_tiny(name, true_sequential=True), _quantized_tiny(name, true_sequential=False)
    first = lambda model, n: model.get_submodule(f"model.layers.0.{n}").weight  # noqa: E731
    # q/k/v read the layer's input either way (v_proj also takes o_proj's scale in awq_gptq, folded
    # before GPTQ without true_sequential and into its codes after GPTQ with it)
    same = ("self_attn.q_proj", "self_attn.k_proj") + (("self_attn.v_proj",) if name == "gptq" else ())
    for n in same:
        assert torch.equal(first(ts, n), first(one, n)), n
    for n in ("self_attn.o_proj", "mlp.down_proj"):  # inputs from the quantized sets before them
        assert not torch.equal(first(ts, n), first(one, n)), n
    for n, lin in target_linears(ts).items():  # scales folded into quantized v/up_proj kept their codes
        torch.testing.assert_close(lin.weight, ts_res.qweights[n].dequantize(), rtol=0, atol=0)


def test_input_set_stages_follow_the_layer_and_keep_unmapped_linears():
    model = tiny_model("llama", vocab_size=256)
    linears = layer_linears(model.model.layers[0])
    linears["extra"] = torch.nn.Linear(4, 4)
    stages = input_set_stages(linears, mapping_for(model))
    assert [list(s) for s in stages] == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                         ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"],
                                         ["extra"]]
