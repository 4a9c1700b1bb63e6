"""Evaluation suites, one module ``harness.eval.<name>`` each, exposing ``SUITE``.

What the pipeline calls (``cfg`` is the whole run config; nothing else is needed):

``check_installed(name)``
    Before the model loads: a HarnessError with an install hint when a package the suite reads is
    missing.
``prepare_all(names, tok, cfg) -> {name: data}``  (one suite: ``prepare(name, tok, cfg) -> data``)
    Load and validate every suite's inputs, before any quantization so that mistakes fail fast. The
    values are the suites' own data (picklable, hashable by content); ``sanity.check`` takes this dict.
``evaluate(name, model, tok, data, cfg, reference=None) -> SuiteOutput``
    Score the model: once on the FP model with ``reference=None`` (its ``SuiteOutput.reference`` is
    cached on disk, keyed by the model's weights and the suite inputs) and again on each quantized
    model with that FP ``reference``, so that fidelity metrics (KL to FP, agreement) can be computed.

A suite (``suite(name)``) receives its own settings, never the whole config:

``settings(cfg) -> S``
    A small view dataclass of what the suite reads (``cfg.eval.<suite>`` plus the shared ``cfg.eval``
    fields it needs; see :mod:`harness.eval.views`). Defaults live only in :mod:`harness.config`.
``prepare(tok, s) -> data`` and ``evaluate(model, tok, data, s, reference=None) -> SuiteOutput``
    As above, with ``s = settings(cfg)``.
``check_installed() -> None`` (optional)

Rows are dicts with at least ``task, metric, value, stderr, n``; the harness adds run columns.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterable

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


def suite(name: str):
    """The suite object (``settings`` / ``prepare`` / ``evaluate`` on its own settings)."""
    if name not in SUITE_MODULES:
        raise HarnessError(f"unknown eval suite {name!r}; available: {', '.join(available())}")
    return importlib.import_module(SUITE_MODULES[name]).SUITE


def check_installed(name: str) -> None:
    check = getattr(suite(name), "check_installed", None)  # optional: only suites with a data package
    if check is not None:
        check()


def settings(name: str, cfg):
    return suite(name).settings(cfg)


def prepare(name: str, tok, cfg):
    s = suite(name)
    return s.prepare(tok, s.settings(cfg))


def prepare_all(names: Iterable[str], tok, cfg) -> dict[str, Any]:
    return {name: prepare(name, tok, cfg) for name in names}


def evaluate(name: str, model, tok, data, cfg, reference=None) -> SuiteOutput:
    s = suite(name)
    return s.evaluate(model, tok, data, s.settings(cfg), reference=reference)
