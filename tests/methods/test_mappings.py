import pytest
import torch

import methods
from methods.capture import decoder_layers, layer_linears
from methods.mappings import MAPPINGS, UnsupportedArchitecture, mapping_for
from tests.conftest import tiny_model
from tests.methods.helpers import method_cfg, random_calib


@pytest.mark.parametrize("arch", sorted(MAPPINGS))
def test_every_mapped_module_exists_and_input_sets_cover_the_layer(arch):
    model = tiny_model(arch, vocab_size=256)
    mapping = mapping_for(model)
    layers = decoder_layers(model, mapping)
    assert len(layers) == model.config.num_hidden_layers
    layer = layers[0]
    linears = set(layer_linears(layer))
    assert {n for s in mapping.input_sets for n in s} == linears
    for group in mapping.scale_groups:
        layer.get_submodule(group.prev)  # raises when the mapping names a module the model lacks
        assert set(group.linears) <= linears
        # a group scales exactly one input set: the Linears that read the same tensor
        assert set(mapping.input_set_of(group.linears[0])) == set(group.linears)


def test_gemma3_mapping_folds_mlp_scale_into_the_pre_feedforward_norm():
    mapping = mapping_for(tiny_model("gemma3_text", vocab_size=256))
    assert mapping.norm_plus_one
    prev = {g.linears: g.prev for g in mapping.scale_groups}
    assert prev[("mlp.gate_proj", "mlp.up_proj")] == "pre_feedforward_layernorm"


def _gpt2():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_unsupported_architecture_error_lists_supported_ones():
    with pytest.raises(UnsupportedArchitecture) as e:
        mapping_for(_gpt2())
    msg = str(e.value)
    assert "'gpt2'" in msg and all(name in msg for name in MAPPINGS)
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["awq", "gptq"])
def test_calibrated_methods_refuse_unsupported_architectures_before_touching_weights(name):
    model = _gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedArchitecture, match="supported: gemma3_text, llama"):
        methods.get(name).quantize(model, random_calib(n=2, seqlen=8), method_cfg(name))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
