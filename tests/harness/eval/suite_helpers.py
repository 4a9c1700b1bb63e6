"""Shared bits for end-to-end suite tests on tiny random models."""
import copy

import torch
from omegaconf import OmegaConf

from harness.config import EvalConfig


def eval_cfg(seed=0, **eval_overrides):
    cfg = OmegaConf.create({"seed": seed, "eval": OmegaConf.structured(EvalConfig)})
    for key, value in eval_overrides.items():
        OmegaConf.update(cfg, f"eval.{key}", value, merge=False)
    return cfg


def perturbed(model, scale=0.02, seed=1):
    """A copy of ``model`` with noise on every weight: a stand-in for a quantized model."""
    g = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean())
    return other


def by_metric(rows, task=None):
    return {r["metric"]: r for r in rows if task is None or r["task"] == task}
