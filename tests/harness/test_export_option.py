"""`export.dir=...`: a quantized run writes an AWQ-GEMM checkpoint that kernels/export.py reads back."""
import json
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import methods
from harness.data import EVAL_DIR
from kernels.export import load_checkpoint
from kernels.qlinear import QuantLinear

SMALL = ["calib=code", "calib.n_samples=2", "calib.seqlen=32", "eval=perplexity", "eval.seqlen=64",
         "eval.max_windows=1", f"eval.texts=[{EVAL_DIR / 'prose_en.txt'}]"]


def harness(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_rtn_run_exports_a_checkpoint_equal_to_the_fake_quant_model(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "ckpt"
    r = harness("method=rtn", "model=path", f"model.path={tiny_llama_dir}", f"export.dir={ckpt}",
                f"hydra.run.dir={tmp_path / 'run'}", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "results.csv").is_file()
    info = json.loads((ckpt / "export.json").read_text())
    assert info["format"] == "awq" and info["dtype"] == "fp16"
    assert info["bytes"] == sum(f.stat().st_size for f in ckpt.iterdir() if f.name != "export.json")
    assert f"exported AWQ-GEMM checkpoint to {ckpt}: {info['bytes']:,} bytes" in r.stdout
    umask = os.umask(0o022)
    os.umask(umask)  # the harness ran under it: 0755/0644 under the usual 022
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(f.stat().st_mode) for f in ckpt.iterdir()} == {0o666 & ~umask}
    assert (ckpt / "serving_reference.json").is_file()
    loaded, _ = load_checkpoint(ckpt, dtype=torch.float32)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 2 * 7
    assert loaded.config.quantization_config["group_size"] == 64

    fake = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    methods.get("rtn").quantize(fake, None, SimpleNamespace(bits=4, group_size=64, symmetric=False,
                                                            quantize_lm_head=False))
    ids = torch.arange(1, 33).view(1, -1)
    with torch.no_grad():
        # only the fp16 rounding of the scales and the unquantized tensors separates the two
        # (relative weight change <= 2**-11 each)
        torch.testing.assert_close(loaded(ids).logits, fake(ids).logits, rtol=0, atol=2e-3)
    assert not list(tmp_path.glob(".ckpt.*"))  # no temporary directory left behind


@pytest.mark.parametrize("args, needle", [
    (["method=fp"], "export.dir needs a quantizing method"),
    (["method=rtn", "method.bits=3"], "export.dir writes 4-bit grouped AWQ-GEMM checkpoints"),
    (["method=rtn", "method.group_size=-1"], "export.dir writes 4-bit grouped AWQ-GEMM checkpoints"),
    (["method=rtn", "export.dtype=int8"], "unknown export.dtype 'int8'; choose one of: fp32, bf16, fp16"),
    (["method=rtn", "export.format=gguf"], "unknown export.format 'gguf'; choose one of: awq, gptq"),
])
def test_export_rejects_what_the_format_cannot_hold(args, needle, tmp_path):
    r = harness(*args, f"export.dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ckpt").exists()


def test_export_never_overwrites_an_existing_directory(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "keep.txt").write_text("precious")
    r = harness("method=rtn", f"export.dir={ckpt}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode != 0 and "already exists and is not an empty directory" in r.stderr
    assert (ckpt / "keep.txt").read_text() == "precious"


def test_sizes_are_measured_before_the_export_packs_the_layers(tiny_llama_dir, tmp_path):
    import pandas as pd

    r = harness("method=rtn", "model=path", f"model.path={tiny_llama_dir}", f"export.dir={tmp_path / 'ckpt'}",
                f"hydra.run.dir={tmp_path / 'run'}", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rtn = pd.read_csv(tmp_path / "run" / "results.csv").query("method == 'rtn'")
    assert (rtn.params_quantized > 0).all() and (rtn.quant_groups > 0).all()
