"""What a suite reads from the run's config: a small view dataclass per suite, filled by name.

Defaults live only in :mod:`harness.config` (the Hydra schema); the views below have none. A suite's
``settings(cfg)`` picks its own node (``cfg.eval.code``, ...) plus the shared ``cfg.eval`` fields it
needs, so ``prepare`` and ``evaluate`` never see the whole config. Command-line names are unchanged
(``eval.seqlen``, ``eval.code.n_problems``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import ListConfig


def plain(value):
    """A config list as a Python list (other values as they are)."""
    return list(value) if isinstance(value, ListConfig) else value


def view(cls, node, **given):
    """An instance of the dataclass ``cls``: each field read from ``node`` by its own name, except the
    fields passed in ``given``. A field ``node`` lacks is an AttributeError, never a silent default."""
    read = {f.name: plain(getattr(node, f.name)) for f in fields(cls) if f.name not in given}
    return cls(**read, **given)


@dataclass
class GenerationSettings:
    """Shared by the generation suites: greedy decoding, then teacher-forced fidelity to FP."""
    gen_batch_size: int  # prompts per greedy-decoding batch (their answers are teacher-forced in the same batch)
    fidelity_top_k: int  # FP log-probs cached per answer token


def generation_settings(cfg) -> GenerationSettings:
    """The shared generation fields of ``cfg.eval`` (``eval.gen_batch_size``, ...)."""
    return view(GenerationSettings, cfg.eval)
