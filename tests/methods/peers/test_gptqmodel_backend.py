"""method=gptqmodel_awq asks GPTQModel for its torch AWQ kernel (the CPU one), without GPTQModel.

A fake ``gptqmodel`` module stands in for the package: like GPTQModel 7.6 on a CPU, its AWQ fails
with "AWQ: CUDA is not available" unless ``quantize`` gets ``backend=BACKEND.AWQ_TORCH``; its
``save`` writes an AWQ-GEMM checkpoint (round-to-nearest codes of the fp16 weights it was given),
which the adapter reads back into our model.
"""
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import methods
from kernels.pack import pack_awq
from methods.quantizer import QuantizedWeight, QuantSpec
from methods.targets import target_linears
from tests.conftest import tiny_model
from tests.methods.helpers import method_cfg, random_calib

GROUP = 32


class _Backend:
    AUTO = "auto"
    AWQ_TORCH = "awq_torch"


class _QuantizeConfig:
    def __init__(self, **kw):
        self.kw = kw


class _Peer:
    calls: list = []

    def __init__(self, src: str, qcfg: _QuantizeConfig):
        self.src, self.qcfg = Path(src), qcfg

    def quantize(self, rows, batch_size=1, backend=_Backend.AUTO):
        _Peer.calls.append({"backend": backend, "rows": len(rows), **self.qcfg.kw})
        if self.qcfg.kw["method"] == "awq" and backend != _Backend.AWQ_TORCH:
            raise RuntimeError("AWQ: CUDA is not available.")

    def save(self, dst: str):
        dst = Path(dst)
        dst.mkdir(parents=True)
        tensors = load_file(self.src / "model.safetensors")
        for name in [k for k in tensors if k.endswith("proj.weight")]:
            qw = QuantizedWeight.from_weight(tensors.pop(name).float(), QuantSpec(4, self.qcfg.kw["group_size"]))
            for part, t in pack_awq(qw)._asdict().items():
                tensors[name.removesuffix("weight") + part] = t
        save_file(tensors, str(dst / "model.safetensors"))
        config = json.loads((self.src / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": self.qcfg.kw["group_size"],
                                         "zero_point": True, "version": "gemm"}
        (dst / "config.json").write_text(json.dumps(config))


class _GPTQModel:
    @staticmethod
    def load(path, qcfg, device=None):
        assert device == "cpu"
        return _Peer(path, qcfg)


@pytest.fixture
def fake_gptqmodel(monkeypatch):
    mod = types.ModuleType("gptqmodel")
    mod.__spec__ = importlib.machinery.ModuleSpec("gptqmodel", None)  # found by importlib.util.find_spec
    mod.GPTQModel, mod.QuantizeConfig, mod.BACKEND = _GPTQModel, _QuantizeConfig, _Backend
    monkeypatch.setitem(sys.modules, "gptqmodel", mod)
    _Peer.calls = []
    return _Peer.calls


def test_awq_asks_for_the_torch_backend_and_lands_its_weights(fake_gptqmodel, smol_tokenizer):
    model = tiny_model("llama")
    fp16 = {n: lin.weight.detach().half().float() for n, lin in target_linears(model).items()}
    calib = random_calib(vocab=model.config.vocab_size, n=4, seqlen=32, tokenizer=smol_tokenizer)
    res = methods.get("gptqmodel_awq").quantize(model, calib, method_cfg("gptqmodel_awq", bits=4, group_size=GROUP))
    assert fake_gptqmodel == [{"backend": _Backend.AWQ_TORCH, "rows": 4, "bits": 4, "group_size": GROUP,
                               "sym": False, "method": "awq", "format": "gemm"}]
    assert set(res.qweights) == set(fp16)
    for name, w in fp16.items():
        want = QuantizedWeight.from_weight(w, QuantSpec(4, GROUP)).dequantize()
        torch.testing.assert_close(model.get_submodule(name).weight, want, rtol=0, atol=1e-3)  # fp16 scales


def test_gptq_keeps_gptqmodels_default_backend(fake_gptqmodel, smol_tokenizer):
    model = tiny_model("llama")
    calib = random_calib(vocab=model.config.vocab_size, n=2, seqlen=32, tokenizer=smol_tokenizer)
    with pytest.raises(KeyError):  # the fake writes only AWQ-GEMM tensors; the call is what is checked
        methods.get("gptqmodel_gptq").quantize(model, calib, method_cfg("gptqmodel_gptq", bits=4, group_size=GROUP))
    assert fake_gptqmodel[0]["backend"] == _Backend.AUTO and fake_gptqmodel[0]["method"] == "gptq"
