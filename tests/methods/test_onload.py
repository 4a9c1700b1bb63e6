"""methods/onload.py: offloaded decoder layers give the same numbers as resident ones."""
from types import SimpleNamespace

import pytest
import torch

import methods
from harness import offloading
from methods import onload
from tests.conftest import tiny_model


def offloaded_copy(kind: str, saved, arch: str = "llama"):
    if kind == "disk":
        return offloading.from_disk(saved, torch.device("cpu"), torch.float32, saved / "scratch")
    model = tiny_model(arch)
    if kind == "host":
        offloading.to_host(model, torch.device("cpu"), torch.float32)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama-weights")
    tiny_model("llama").save_pretrained(d)
    return d


IDS = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(1))


def test_released_layers_are_meta_and_forward_is_exact(saved):
    ref = tiny_model("llama")(IDS).logits
    for kind in ("host", "disk"):
        model = offloaded_copy(kind, saved)
        layers = onload.offloaded(model)
        assert len(layers) == 2
        assert all(p.is_meta for p in model.model.layers.parameters())
        assert not model.model.embed_tokens.weight.is_meta
        assert torch.equal(model(IDS).logits, ref)
        assert all(p.is_meta for p in model.model.layers.parameters())  # released after the forward


def test_a_read_hold_drops_changes_and_a_write_hold_keeps_them(saved):
    model = offloaded_copy("disk", saved)
    q = model.model.layers[0].self_attn.q_proj
    with onload.held(q, write=False):
        original = q.weight.clone()
        q.weight.mul_(2)
    with onload.held(q, write=False):
        assert torch.equal(q.weight, original)
    with onload.held(q, write=True):
        q.weight.mul_(2)
    with onload.held(q, write=False):
        assert torch.equal(q.weight, 2 * original)
    onload.reset(model)
    with onload.held(q, write=False):
        assert torch.equal(q.weight, original)


def test_model_to_dtype_reaches_offloaded_layers(saved):
    model = offloaded_copy("host", saved)
    model.to(torch.bfloat16)
    layer = model.model.layers[1]
    with onload.held(layer, write=False):
        assert {p.dtype for p in layer.parameters()} == {torch.bfloat16}
        assert not any(p.is_meta for p in layer.parameters())


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "awq_gptq", "hqq"])
def test_every_method_gives_the_same_weights_offloaded(method, saved):
    entry = methods.entry(method)
    cfg = entry.default_config()
    calib = SimpleNamespace(input_ids=torch.randint(0, 49152, (4, 32), generator=torch.Generator().manual_seed(2)))
    outs = {}
    for kind in ("none", "host", "disk"):
        model = offloaded_copy(kind, saved)
        result = entry.method.quantize(model, calib if entry.calibrated else None, cfg)
        outs[kind] = (model(IDS).logits, dict(onload.state_items(model)), result)
    ref_logits, ref_state, ref_result = outs["none"]
    assert ref_result.qweights  # resident layers keep their codes for export
    for kind in ("host", "disk"):
        logits, state, result = outs[kind]
        assert torch.equal(logits, ref_logits), kind
        assert state.keys() == ref_state.keys() and all(torch.equal(state[k], ref_state[k]) for k in state), kind
        assert not result.qweights  # offloaded layers' codes are not kept (a byte per weight)


def test_disk_offload_never_writes_the_checkpoint(saved):
    from safetensors.torch import load_file

    before = load_file(str(saved / "model.safetensors"))
    model = offloaded_copy("disk", saved)
    methods.entry("rtn").method.quantize(model, None, methods.entry("rtn").default_config())
    scratch = onload.offloaded(model)[0].home.scratch
    assert scratch.is_file()  # the quantized layer went to its own file
    after = load_file(str(saved / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    onload.reset(model)
    assert not scratch.exists()


def test_gemma3_layers_offload_exactly(tmp_path):
    model = tiny_model("gemma3_text")
    model.save_pretrained(tmp_path)
    ref = model(IDS).logits
    disk = offloading.from_disk(tmp_path, torch.device("cpu"), torch.float32, tmp_path / "scratch")
    assert torch.equal(disk(IDS).logits, ref)
