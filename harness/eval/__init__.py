"""Evaluation suites. Each suite is a module ``harness.eval.<name>`` exposing ``SUITE``: an object with

``prepare(tok, cfg) -> data``
    Load and validate the suite's inputs (raise HarnessError on bad input). Called before any
    quantization so that mistakes fail fast.
``check_installed() -> None`` (optional)
    Raise HarnessError with an install hint when a package the suite reads is missing; called
    before the model loads.
``evaluate(model, tok, data, cfg, reference=None) -> SuiteOutput``
    Score the model. Called once on the FP model with ``reference=None`` (its ``reference`` output is
    cached on disk, keyed by the model's weights and the suite inputs) and again on the quantized
    model with the FP ``reference`` so that fidelity metrics (KL to FP, agreement) can be computed.

Rows are dicts with at least ``task, metric, value, stderr, n``; the harness adds run columns.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError

SUITE_MODULES = {
    "perplexity": "harness.eval.perplexity",
    "code": "harness.eval.code",
    "json": "harness.eval.json_format",
    "tool_calls": "harness.eval.tool_calls",
    "multilingual": "harness.eval.multilingual",
    "long_context": "harness.eval.long_context",
    "lm_eval": "harness.eval.lm_eval_adapter",
}


@dataclass
class SuiteOutput:
    rows: list[dict]
    reference: Any = None  # what the quantized run needs from the FP run (picklable)
    extra: dict = field(default_factory=dict)


def available() -> list[str]:
    return list(SUITE_MODULES)


def get(name: str):
    if name not in SUITE_MODULES:
        raise HarnessError(f"unknown eval suite {name!r}; available: {', '.join(available())}")
    return importlib.import_module(SUITE_MODULES[name]).SUITE
