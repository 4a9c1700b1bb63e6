"""export_checkpoint -> load_checkpoint on a tiny random Llama, and malformed checkpoints.

Tolerances: a checkpoint stores fp16 scales, while methods/quantizer.py keeps fp32 ones. Against a
model whose weights use the fp16-rounded scales the reloaded logits agree to fp32 summation noise
(atol 1e-5); against the fp32-scale fake-quant model they agree to atol 5e-3 (scale rounding is a
relative weight change of at most 2**-11). Exports in fp16/bf16 round the model in memory too, so it
and the reloaded model agree to summation noise as well.
"""
import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from kernels.export import (CheckpointError, awq_quantization_config, checkpoint_bytes, export_checkpoint,
                            gptq_quantization_config, load_checkpoint)
from kernels.pack import unpack_gptq
from kernels.qlinear import QuantLinear
from methods.quantizer import QuantizedWeight, QuantSpec
from methods.targets import target_linears
from tests.conftest import tiny_model

GROUP = 32
LLAMA = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32)
Q_PROJ = "model.layers.0.self_attn.q_proj"


@torch.no_grad()
def _fake_quantize(model, spec):
    """Quantize every Linear but the head and load the dequantized weights (the fake-quant model)."""
    qweights = {}
    for name, lin in target_linears(model).items():
        qw = QuantizedWeight.from_weight(lin.weight, spec)
        lin.weight.copy_(qw.dequantize())
        qweights[name] = qw
    return qweights


@torch.no_grad()
def _logits(model, ids):
    return model(ids).logits


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, LLAMA["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_reproduces_fake_quant_logits(tmp_path, smol_tokenizer, ids, tied):
    model = tiny_model("llama", tie_word_embeddings=tied, **LLAMA)
    qweights = _fake_quantize(model, QuantSpec(4, GROUP))
    fake_quant = _logits(model, ids)
    with torch.no_grad():  # the same codes with the fp16 scales a checkpoint stores
        for name, qw in qweights.items():
            model.get_submodule(name).weight.copy_(QuantizedWeight(qw.codes, qw.scale.half().float(), qw.zero,
                                                                   qw.spec).dequantize())
    fp16_scales = _logits(model, ids)

    export_checkpoint(model, smol_tokenizer, qweights, GROUP, tmp_path, dtype=torch.float32)
    loaded, tok = load_checkpoint(tmp_path)

    assert all(isinstance(loaded.get_submodule(n), QuantLinear) for n in qweights)
    assert type(loaded.lm_head) is torch.nn.Linear
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    got = _logits(loaded, ids)
    torch.testing.assert_close(got, fp16_scales, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, fake_quant, rtol=0, atol=5e-3)
    assert tok("hello world").input_ids == smol_tokenizer("hello world").input_ids


def test_checkpoint_contents(tmp_path, smol_tokenizer):
    model = tiny_model("llama", tie_word_embeddings=True, **LLAMA)
    model.config.quantization_config = {"quant_method": "gguf"}  # as a model read from a GGUF file has
    export_checkpoint(model, smol_tokenizer, _fake_quantize(model, QuantSpec(4, GROUP)), GROUP, tmp_path)

    tensors = load_file(tmp_path / "model.safetensors")
    assert (tensors[f"{Q_PROJ}.qweight"].shape, tensors[f"{Q_PROJ}.qweight"].dtype) == ((128, 16), torch.int32)
    assert (tensors[f"{Q_PROJ}.qzeros"].shape, tensors[f"{Q_PROJ}.qzeros"].dtype) == ((4, 16), torch.int32)
    assert (tensors[f"{Q_PROJ}.scales"].shape, tensors[f"{Q_PROJ}.scales"].dtype) == ((4, 128), torch.float16)
    assert f"{Q_PROJ}.weight" not in tensors and "lm_head.weight" not in tensors  # tied head stored once
    assert "model.embed_tokens.weight" in tensors and "model.norm.weight" in tensors
    assert tensors["model.embed_tokens.weight"].dtype == tensors["model.norm.weight"].dtype == torch.float16

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == awq_quantization_config(GROUP)
    assert config["dtype"] == config["torch_dtype"] == "float16"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (tmp_path / "tokenizer.json").is_file() or (tmp_path / "tokenizer.model").is_file()


def test_quantized_head_is_stored_packed(tmp_path, smol_tokenizer, ids):
    model = tiny_model("llama", tie_word_embeddings=True, **LLAMA)
    qweights = _fake_quantize(model, QuantSpec(4, GROUP))
    qweights["lm_head"] = QuantizedWeight.from_weight(model.lm_head.weight, QuantSpec(4, GROUP))
    export_checkpoint(model, smol_tokenizer, qweights, GROUP, tmp_path)
    expected = _logits(model, ids)  # the exported model itself now runs QuantLinear layers
    loaded, _ = load_checkpoint(tmp_path, dtype=torch.float32)
    assert isinstance(loaded.lm_head, QuantLinear) and loaded.config.tie_word_embeddings is False
    torch.testing.assert_close(_logits(loaded, ids), expected, rtol=0, atol=1e-5)


def test_export_rejects_mismatched_group_size(tmp_path, smol_tokenizer):
    model = tiny_model("llama", **LLAMA)
    with pytest.raises(ValueError, match="group size 32, not group_size=64"):
        export_checkpoint(model, smol_tokenizer, _fake_quantize(model, QuantSpec(4, GROUP)), 64, tmp_path)


# ----------------------------------------------------------------------------------------------
# malformed checkpoints


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory, smol_tokenizer):
    d = tmp_path_factory.mktemp("good")
    model = tiny_model("llama", tie_word_embeddings=True, **LLAMA)
    export_checkpoint(model, smol_tokenizer, _fake_quantize(model, QuantSpec(4, GROUP)), GROUP, d)
    return d


@pytest.fixture
def bad_dir(good_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(good_dir, d)
    return d


def _edit_tensors(d, edit):
    tensors = load_file(d / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))


def _edit_config(d, edit):
    config = json.loads((d / "config.json").read_text())
    edit(config)
    (d / "config.json").write_text(json.dumps(config))


def test_good_checkpoint_loads(good_dir):
    load_checkpoint(good_dir)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop(f"{Q_PROJ}.scales"), f"missing tensor {Q_PROJ}.scales"),
    (lambda t: t.pop("model.norm.weight"), "missing tensor model.norm.weight"),
    (lambda t: t.update({f"{Q_PROJ}.qweight": t[f"{Q_PROJ}.qweight"][:64]}), rf"{Q_PROJ}.qweight has shape \[64, 16\], expected \[128, 16\]"),
    (lambda t: t.update({f"{Q_PROJ}.scales": t[f"{Q_PROJ}.scales"].float()}),
     "dtype torch.float32, expected torch.float16 or torch.bfloat16"),
    (lambda t: t.update({f"{Q_PROJ}.scales": t[f"{Q_PROJ}.scales"].bfloat16()}), "scales mix torch.bfloat16 and torch.float16"),
    (lambda t: t.update({"model.norm.weight": torch.ones(7)}), r"model.norm.weight has shape \[7\], expected \[128\]"),
    (lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.ones(3)}), "unexpected tensor.*mlp.extra.weight"),
    (lambda t: t.update({"model.norm.qweight": torch.ones(3, dtype=torch.int32)}), "does not belong to a Linear"),
])
def test_malformed_tensors_are_rejected(bad_dir, edit, message):
    _edit_tensors(bad_dir, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad_dir)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("quantization_config"), "no quantization_config"),
    (lambda c: c.update(quantization_config={"quant_method": "gguf"}), "quant_method='gguf' is not supported"),
    (lambda c: c["quantization_config"].update(quant_method="gptq"), r"down_proj.qweight has shape \[256, 16\], expected \[32, 128\]"),
    (lambda c: c.update(quantization_config={**gptq_quantization_config(32), "desc_act": True}), "only desc_act=false"),
    (lambda c: c.update(quantization_config={**gptq_quantization_config(32), "checkpoint_format": "gptq_v2"}),
     "checkpoint_format='gptq_v2' is not supported"),
    (lambda c: c["quantization_config"].update(bits=8), "bits=8 is not supported"),
    (lambda c: c["quantization_config"].update(version="gemv"), "version='gemv' is not supported"),
    (lambda c: c["quantization_config"].update(zero_point=False), "zero_point=False"),
    (lambda c: c["quantization_config"].update(group_size=48), "group_size=48 does not divide in_features=256 of model.layers.0.mlp.down_proj"),
    (lambda c: c["quantization_config"].update(group_size=-1), "group_size=-1 must be a positive integer"),
    (lambda c: c["quantization_config"].update(group_size=64), r"down_proj.qzeros has shape \[8, 16\], expected \[4, 16\]"),
    (lambda c: c.update(model_type="gpt2"), "model_type='gpt2' is not supported"),
])
def test_bad_quantization_config_is_rejected(bad_dir, edit, message):
    _edit_config(bad_dir, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad_dir)


def test_missing_files_are_rejected(bad_dir):
    (bad_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_checkpoint(bad_dir)
    (bad_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(bad_dir)


# ----------------------------------------------------------------------------------------------
# export dtype, size, file modes, the GPTQ layout, bf16 scales


def test_fp16_export_equals_the_model_in_memory_and_is_smaller(tmp_path, smol_tokenizer, ids):
    sizes = {}
    for dtype in (torch.float16, torch.float32):
        model = tiny_model("llama", tie_word_embeddings=False, **LLAMA)
        out = tmp_path / str(dtype)
        export_checkpoint(model, smol_tokenizer, _fake_quantize(model, QuantSpec(4, GROUP)), GROUP, out, dtype=dtype)
        loaded, _ = load_checkpoint(out, dtype=torch.float32)
        torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=1e-5)
        sizes[dtype] = (out / "model.safetensors").stat().st_size
    assert sizes[torch.float16] < 0.75 * sizes[torch.float32]  # embedding and head halve


def test_checkpoint_size_is_its_tensors_bytes(tmp_path, smol_tokenizer):
    model = tiny_model("llama", tie_word_embeddings=True, **{**LLAMA, "vocab_size": 4096})
    export_checkpoint(model, smol_tokenizer, _fake_quantize(model, QuantSpec(4, GROUP)), GROUP, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert {t.dtype for n, t in tensors.items() if not n.endswith(("qweight", "qzeros"))} == {torch.float16}
    data = sum(t.numel() * t.element_size() for t in tensors.values())
    size = checkpoint_bytes(tmp_path)
    assert size["tensors"] == data
    assert abs((tmp_path / "model.safetensors").stat().st_size - data) <= 0.01 * data
    assert size["files"] == sum(p.stat().st_size for p in tmp_path.iterdir())


def test_bf16_export(tmp_path, smol_tokenizer, ids):
    model = tiny_model("llama", **LLAMA)
    export_checkpoint(model, smol_tokenizer, _fake_quantize(model, QuantSpec(4, GROUP)), GROUP, tmp_path,
                      dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["model.norm.weight"].dtype == torch.bfloat16 and tensors[f"{Q_PROJ}.scales"].dtype == torch.float16
    loaded, _ = load_checkpoint(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=1e-5)


def test_export_refuses_a_tensor_beyond_fp16(tmp_path, smol_tokenizer):
    model = tiny_model("llama", **LLAMA)
    qweights = _fake_quantize(model, QuantSpec(4, GROUP))
    with torch.no_grad():
        model.model.norm.weight[0] = 1e6
    with pytest.raises(ValueError, match="model.norm.weight does not fit in torch.float16"):
        export_checkpoint(model, smol_tokenizer, qweights, GROUP, tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_is_readable_as_the_umask_allows(tmp_path, smol_tokenizer, umask):
    model = tiny_model("llama", **LLAMA)
    out = tmp_path / "ckpt"
    out.mkdir(mode=0o700)  # as tempfile.mkdtemp makes it
    old = os.umask(umask)
    try:
        export_checkpoint(model, smol_tokenizer, _fake_quantize(model, QuantSpec(4, GROUP)), GROUP, out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = list(out.iterdir())
    assert "model.safetensors" in {f.name for f in files}
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~umask}
    if umask == 0o022:  # another user can list the directory and read every file
        assert out.stat().st_mode & stat.S_IROTH and out.stat().st_mode & stat.S_IXOTH
        assert all(f.stat().st_mode & stat.S_IROTH for f in files)


def test_gptq_layout(tmp_path, smol_tokenizer, ids):
    model = tiny_model("llama", **LLAMA)
    qweights = _fake_quantize(model, QuantSpec(4, GROUP))
    for qw in qweights.values():  # GPTQ v1 stores zero-1: zero point 0 cannot be written
        qw.zero.clamp_(min=1)
    export_checkpoint(model, smol_tokenizer, qweights, GROUP, tmp_path, fmt="gptq")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == gptq_quantization_config(GROUP)
    assert config["quantization_config"]["desc_act"] is False
    t = load_file(tmp_path / "model.safetensors")
    assert t[f"{Q_PROJ}.qweight"].shape == (128 // 8, 128) and t[f"{Q_PROJ}.g_idx"].shape == (128,)
    qw = unpack_gptq(*(t[f"{Q_PROJ}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")))
    assert torch.equal(qw.codes, qweights[Q_PROJ].codes) and torch.equal(qw.zero, qweights[Q_PROJ].zero)
    loaded, _ = load_checkpoint(tmp_path, dtype=torch.float32)
    assert loaded.checkpoint_info["format"] == "gptq"
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=1e-5)


def test_gptq_act_order_is_refused(tmp_path, smol_tokenizer):
    model = tiny_model("llama", **LLAMA)
    qweights = _fake_quantize(model, QuantSpec(4, GROUP))
    for qw in qweights.values():
        qw.zero.clamp_(min=1)
    export_checkpoint(model, smol_tokenizer, qweights, GROUP, tmp_path, fmt="gptq")
    _edit_tensors(tmp_path, lambda t: t.update({f"{Q_PROJ}.g_idx": t[f"{Q_PROJ}.g_idx"].flip(0)}))
    with pytest.raises(CheckpointError, match=f"{Q_PROJ}: g_idx is not arange"):
        load_checkpoint(tmp_path)


def test_bf16_scales_load_and_decode_exactly(bad_dir, ids):
    """GPTQModel's CPU output: the same AWQ-GEMM layout with bf16 scales."""
    def to_bf16(t):
        t.update({k: v.bfloat16() for k, v in t.items() if k.endswith(".scales")})
    _edit_tensors(bad_dir, to_bf16)
    tensors = load_file(bad_dir / "model.safetensors")
    loaded, _ = load_checkpoint(bad_dir, dtype=torch.float32)
    assert loaded.checkpoint_info["scales_dtype"] == "bfloat16"
    plain = tiny_model("llama", tie_word_embeddings=True, **LLAMA)
    plain.load_state_dict({k: v.float() for k, v in tensors.items() if k.endswith("weight")}, strict=False)
    for name in target_linears(plain):
        ql = loaded.get_submodule(name)
        assert ql.scales.dtype == torch.bfloat16
        codes = ql.quantized_weight().codes.float()
        zero, scale = ql.quantized_weight().zero, tensors[f"{name}.scales"].t().float()
        want = ((codes.view(*codes.shape[:1], -1, GROUP) - zero[..., None]) * scale[..., None]).reshape(codes.shape)
        assert torch.equal(ql.dequantize(), want)  # (q - z) * s with the bf16 scale as stored
        with torch.no_grad():
            plain.get_submodule(name).weight.copy_(want)
    torch.testing.assert_close(_logits(loaded, ids), _logits(plain, ids), rtol=0, atol=1e-5)
    greedy = [m.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0) for m in (loaded, plain)]
    assert torch.equal(*greedy)
