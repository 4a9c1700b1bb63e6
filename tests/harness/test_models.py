"""harness/models.py: compute dtype resolution, model directory checks, the meta-device skeleton."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from harness import models
from harness.config import ModelConfig
from harness.errors import HarnessError


def cpuinfo(monkeypatch, flags: str):
    real = models.Path.read_text
    monkeypatch.setattr(models.Path, "read_text", lambda self, *a, **k: f"processor : 0\nflags : {flags}\n"
                        if str(self) == "/proc/cpuinfo" else real(self, *a, **k))


@pytest.mark.parametrize("flags, expected", [("fpu sse2 avx2 fma", "fp32"), ("avx2 avx512f avx512_bf16", "bf16"),
                                             ("avx2 amx_tile amx_bf16", "bf16")])
def test_auto_compute_dtype_follows_the_cpu_flags(monkeypatch, flags, expected):
    cpuinfo(monkeypatch, flags)
    assert models.resolve_compute_dtype("auto", torch.device("cpu")) == expected


def test_explicit_compute_dtypes_and_a_typo():
    for name in ("fp32", "bf16", "fp16"):
        assert models.resolve_compute_dtype(name, torch.device("cpu")) == name
    with pytest.raises(HarnessError, match="unknown model.compute_dtype 'bfloat'; choose one of: auto, fp32, bf16, fp16"):
        models.resolve_compute_dtype("bfloat", torch.device("cpu"))


def path_cfg(d):
    return OmegaConf.structured(ModelConfig(name="tiny", source="path", path=str(d)))


def test_model_dir_checks_name_the_broken_file(tiny_llama_dir, tmp_path):
    assert models.check_model_dir(path_cfg(tiny_llama_dir)) == tiny_llama_dir
    with pytest.raises(HarnessError, match="no config.json"):
        models.check_model_dir(path_cfg(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(HarnessError, match=r"config.json is unreadable \(not a JSON object\)"):
        models.check_model_dir(path_cfg(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(HarnessError, match="model.safetensors is unreadable or truncated"):
        models.check_model_dir(path_cfg(tmp_path))


def test_skeleton_has_the_real_shapes_and_no_memory(tiny_llama_dir):
    skeleton = models.skeleton(path_cfg(tiny_llama_dir))
    model, _ = models.load(path_cfg(tiny_llama_dir))
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert {n: p.shape for n, p in skeleton.named_parameters()} == shapes
    assert all(p.device.type == "meta" for p in skeleton.parameters())
