"""The FP reference cache key is a content hash: equal across processes, different for other inputs."""
import subprocess
import sys

import torch
from omegaconf import OmegaConf

from harness.eval.perplexity import EvalText
from harness.reference import cache_path

CFG = OmegaConf.create({"cache_dir": "/cache", "eval": {"seqlen": 8}})
KEY_SCRIPT = """
import torch
from omegaconf import OmegaConf
from harness.eval.perplexity import EvalText
from harness.reference import cache_path
cfg = OmegaConf.create({"cache_dir": "/cache", "eval": {"seqlen": 8}})
print(cache_path(cfg, "w", "perplexity", [EvalText("a", "a.txt", torch.arange(16).view(2, 8), 16)]))
"""


def _key(windows):
    return str(cache_path(CFG, "w", "perplexity", [EvalText("a", "a.txt", windows, 16)]))


def test_key_is_stable_across_processes():
    other = subprocess.run([sys.executable, "-c", KEY_SCRIPT], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == _key(torch.arange(16).view(2, 8))


def test_key_changes_with_the_inputs():
    assert _key(torch.arange(16).view(2, 8)) != _key(torch.arange(1, 17).view(2, 8))
    assert _key(torch.arange(16).view(2, 8)) != _key(torch.arange(16).view(4, 4))
