"""Method configs and calibration data for tests, built from the real config dataclasses."""
from dataclasses import replace

import torch

from harness.calib import CalibSet
import methods


def method_cfg(name: str, **kw):
    """The registered dataclass defaults for ``name`` with test-sized overrides."""
    return replace(methods.entry(name).default_config(), **{"group_size": 16, **kw})


def random_calib(vocab: int = 256, n: int = 4, seqlen: int = 32, seed: int = 0, tokenizer=None) -> CalibSet:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seqlen), generator=gen)
    return CalibSet(name="random", input_ids=ids, source="test", stream_tokens=ids.numel(), tokenizer=tokenizer)
