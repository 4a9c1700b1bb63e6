"""`export.dir=...`: a quantized run writes an AWQ-GEMM checkpoint that kernels/export.py reads back."""
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
    loaded, _ = load_checkpoint(ckpt)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 2 * 7
    assert loaded.config.quantization_config["group_size"] == 64

    fake = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    methods.get("rtn").quantize(fake, None, SimpleNamespace(bits=4, group_size=64, symmetric=False,
                                                            quantize_lm_head=False))
    ids = torch.arange(1, 33).view(1, -1)
    with torch.no_grad():
        # only the fp16 rounding of the scales separates the two (relative weight change <= 2**-11)
        torch.testing.assert_close(loaded(ids).logits, fake(ids).logits, rtol=0, atol=1e-3)
    assert not list(tmp_path.glob(".ckpt.*"))  # no temporary directory left behind


@pytest.mark.parametrize("args, needle", [
    (["method=fp"], "export.dir needs a quantizing method"),
    (["method=rtn", "method.bits=3"], "export.dir writes 4-bit grouped AWQ-GEMM checkpoints"),
    (["method=rtn", "method.group_size=-1"], "export.dir writes 4-bit grouped AWQ-GEMM checkpoints"),
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
