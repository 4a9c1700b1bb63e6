"""Peer adapters: registered, one-line install hints without the package, and (where the package is
installed) a run on a tiny model that lands the peer's weights in our model."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import methods
from methods.registry import MethodError
from methods.targets import target_linears
from tests.conftest import tiny_model
from tests.methods.helpers import method_cfg, random_calib

PEERS = {"llmc_awq": "llmcompressor", "llmc_gptq": "llmcompressor",
         "gptqmodel_awq": "gptqmodel", "gptqmodel_gptq": "gptqmodel"}


def installed(module):
    return importlib.util.find_spec(module) is not None


def test_peers_are_registered():
    assert set(PEERS) <= set(methods.available())


@pytest.mark.parametrize("name", sorted(PEERS))
def test_missing_package_fails_with_one_install_line(name, monkeypatch):
    monkeypatch.setitem(sys.modules, PEERS[name], None)  # as if not installed
    model = tiny_model("llama", vocab_size=256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MethodError) as e:
        methods.get(name).quantize(model, random_calib(), method_cfg(name))
    msg = str(e.value)
    assert "\n" not in msg and f"method={name}" in msg
    assert "pip install 'quant-harness[peers]'" in msg and PEERS[name] in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.skipif(installed("llmcompressor"), reason="llm-compressor is installed here")
def test_cli_names_the_install_before_loading_anything(tmp_path):
    r = subprocess.run([sys.executable, "-m", "harness", "method=llmc_awq", "model=path", "model.path=/nonexistent",
                        f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: method=llmc_awq needs the 'llmcompressor>=0.14' package: pip install 'quant-harness[peers]' "
        "(or pip install 'llmcompressor>=0.14')"]


@pytest.mark.parametrize("name", sorted(n for n, m in PEERS.items() if installed(m)) or ["none-installed"])
def test_installed_peer_quantizes_a_tiny_model_into_ours(name, smol_tokenizer):
    if name == "none-installed":
        pytest.skip("no peer package installed (pip install 'quant-harness[peers]')")
    model = tiny_model("llama")
    calib = random_calib(vocab=model.config.vocab_size, n=4, seqlen=32, tokenizer=smol_tokenizer)
    with torch.no_grad():
        ref = model(calib.input_ids).logits
    res = methods.get(name).quantize(model, calib, method_cfg(name, bits=4, group_size=32))
    targets = target_linears(model)
    assert set(res.qweights) == set(targets)
    for n, lin in targets.items():
        torch.testing.assert_close(lin.weight, res.qweights[n].dequantize().to(lin.weight.dtype))
    with torch.no_grad():
        peer_err = (model(calib.input_ids).logits - ref).pow(2).mean().item()
    rtn = tiny_model("llama")
    methods.get("rtn").quantize(rtn, None, method_cfg("rtn", bits=4, group_size=32))
    with torch.no_grad():
        rtn_err = (rtn(calib.input_ids).logits - ref).pow(2).mean().item()
    # a misread grid (a zero point one step off, wrong scales) would be far worse than plain rounding
    assert peer_err < 2 * rtn_err


def test_gptqmodel_awq_gets_the_sessions_half_dtype_else_fp16():
    from methods.capture import forward_dtype
    from methods.peers.gptqmodel_adapter import _half_dtype

    for session, expected in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                              (torch.float32, torch.float16), (None, torch.float16)):
        with forward_dtype(session):
            assert _half_dtype() == expected
