"""harness/tools/offload_demo.py: a random checkpoint written shard by shard, then the harness under a
memory cgroup with its layers on disk (skipped where no v1 memory cgroup can be made)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from harness.tools import offload_demo


def test_random_checkpoint_has_one_shard_per_layer_and_loads(tmp_path, smol_tokenizer):
    smol_tokenizer.save_pretrained(tmp_path / "tok")
    config = offload_demo.llama_config(layers=2, hidden=64, intermediate=128, heads=4, vocab=49152)
    params = offload_demo.write_random_llama(tmp_path / "m", config, tmp_path / "tok")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(set(index.values())) == ["model-0.safetensors", "model-1.safetensors", "model-rest.safetensors"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert sum(p.numel() for p in model.parameters()) == params
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight,
                       load_file(str(tmp_path / "m" / "model-1.safetensors"))["model.layers.1.mlp.up_proj.weight"])
    again = offload_demo.write_random_llama(tmp_path / "m", config, tmp_path / "tok")  # already there: kept
    assert again == params


@pytest.mark.skipif(os.geteuid() != 0 or not (offload_demo.CGROUP_ROOT / "memory.limit_in_bytes").exists(),
                    reason="needs root and a cgroup v1 memory controller")
def test_tiny_demo_runs_under_a_memory_limit(tmp_path, capsys):
    code = offload_demo.main(["--dir", str(tmp_path), "--layers", "2", "--hidden", "64", "--intermediate", "128",
                              "--heads", "4", "--limit-mb", "1500"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "peak RSS" in out and "| awq " in out and "| gptq " in out
    assert not list(offload_demo.CGROUP_ROOT.glob(f"quant-harness-offload-{os.getpid()}"))  # removed
