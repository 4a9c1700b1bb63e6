import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels.qlinear import QuantLinear, dequantize_linears, replace_linears
from methods.quantizer import QuantizedWeight, QuantSpec
from tests.conftest import tiny_model
from tests.kernels.conftest import random_qweight


def _linear_with(qw: QuantizedWeight, bias: bool) -> nn.Linear:
    out_features, in_features = qw.codes.shape
    lin = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(qw.dequantize())
    return lin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_forward_equals_linear_with_dequantized_weight(dtype, bias):
    qw = random_qweight(48, 128, 32, seed=4)  # fp16-representable scales: the packed layer is exact
    lin = _linear_with(qw, bias)
    q = QuantLinear.from_linear(lin, qw)
    x = torch.randn(2, 3, 128).to(dtype)
    expected = F.linear(x, qw.dequantize().to(dtype), None if lin.bias is None else lin.bias.to(dtype))
    y = q(x)
    assert y.shape == (2, 3, 48) and y.dtype == dtype
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_buffers_have_the_awq_layout():
    q = QuantLinear.from_linear(nn.Linear(64, 16), random_qweight(16, 64, 32))
    assert {k: (tuple(v.shape), v.dtype) for k, v in q.state_dict().items()} == {
        "qweight": ((64, 2), torch.int32), "qzeros": ((2, 2), torch.int32),
        "scales": ((2, 16), torch.float16), "bias": ((16,), torch.float32)}


def test_dtype_casts_keep_fp16_scales():
    q = QuantLinear.from_linear(nn.Linear(64, 16), random_qweight(16, 64, 32))
    scales = q.scales.clone()
    q.to(torch.bfloat16)
    assert q.scales.dtype == torch.float16 and torch.equal(q.scales, scales)
    assert q.bias.dtype == torch.bfloat16 and q.qweight.dtype == torch.int32


def test_from_linear_rejects_a_mismatched_weight():
    with pytest.raises(ValueError, match="do not match"):
        QuantLinear.from_linear(nn.Linear(64, 16), random_qweight(8, 64, 32))


def test_replace_linears_swaps_named_modules_only():
    model = tiny_model("llama", vocab_size=256)
    spec = QuantSpec(4, 32)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    qweights = {n: QuantizedWeight.from_weight(model.get_submodule(n).weight, spec) for n in names}
    replace_linears(model, qweights)
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n in names)
    assert isinstance(model.get_submodule("model.layers.0.self_attn.k_proj"), nn.Linear)
    with pytest.raises(ValueError, match="no module named 'model.nope'"):
        replace_linears(model, {"model.nope": qweights[names[0]]})
    with pytest.raises(ValueError, match="not an nn.Linear"):
        replace_linears(model, {"model.norm": qweights[names[0]]})


def test_quantizing_a_tied_head_unties_it():
    model = tiny_model("llama", vocab_size=256, tie_word_embeddings=True)
    emb = model.get_input_embeddings().weight.detach().clone()
    qw = QuantizedWeight.from_weight(model.lm_head.weight, QuantSpec(4, 32))
    replace_linears(model, {"lm_head": qw})
    assert isinstance(model.lm_head, QuantLinear) and model.config.tie_word_embeddings is False
    assert torch.equal(model.get_input_embeddings().weight, emb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_linears_computes_what_the_quant_linears_compute(dtype):
    model = tiny_model("llama", vocab_size=256)
    qweights = {n: QuantizedWeight.from_weight(m.weight, QuantSpec(4, 32))
                for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    replace_linears(model, qweights)
    model.to(dtype)
    ids = torch.arange(1, 17).view(1, -1)
    with torch.no_grad():
        packed = model(ids).logits
        dequantize_linears(model, dtype)
        plain = model(ids).logits
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert type(model.get_submodule("model.layers.0.mlp.down_proj")) is nn.Linear
    assert model.get_submodule("model.layers.0.mlp.down_proj").weight.dtype == dtype
    torch.testing.assert_close(plain, packed, rtol=0, atol=0)
