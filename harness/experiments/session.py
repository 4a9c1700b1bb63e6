"""What every study shares: the model loaded once and restored between variants, the eval inputs
with their cached FP reference, and rows in the tidy result schema."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from harness import eval as suites
from harness import models, results, run
from harness.data import EVAL_DIR, shipped_eval_texts
from harness.errors import HarnessError


def select_eval_texts(cfg) -> None:
    """``experiment.eval_texts`` names shipped texts (file stems); they become ``eval.texts``."""
    names = list(cfg.experiment.get("eval_texts") or [])
    if not names:
        return
    shipped = {p.stem: p for p in shipped_eval_texts()}
    unknown = [n for n in names if n not in shipped]
    if unknown:
        raise HarnessError(f"unknown eval text {unknown[0]!r} in experiment.eval_texts; shipped texts: "
                           f"{', '.join(sorted(shipped))} (in {EVAL_DIR})")
    cfg.eval.texts = [str(shipped[n]) for n in names]


def variant_hash(cfg, variant: dict) -> str:
    """A config_hash per variant: the run's hash plus what the variant changes."""
    key = run.config_hash(cfg) + json.dumps(variant, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Session:
    cfg: Any
    model: torch.nn.Module
    tok: Any
    prepared: dict
    refs: dict
    fp_rows: list[dict]
    started_at: str
    snapshot: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    @classmethod
    def open(cls, cfg) -> "Session":
        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(cfg.seed)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        select_eval_texts(cfg)
        run.validate_static(cfg)
        t0 = time.perf_counter()
        model, tok = models.load(cfg.model)
        print(f"[harness] loaded {cfg.model.name} in {time.perf_counter() - t0:.1f}s")
        prepared = {name: suites.get(name).prepare(tok, cfg) for name in cfg.eval.suites}
        fp_rows, refs = run.evaluate_fp_reference(model, tok, prepared, cfg)
        # a CPU copy of the original weights: restoring it is much cheaper than reloading the model
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return cls(cfg, model, tok, prepared, refs, fp_rows, started, snapshot)

    @torch.no_grad()
    def restore(self) -> None:
        self.model.load_state_dict(self.snapshot)

    def evaluate(self) -> list[dict]:
        """Every suite on the model as it is now, scored against the FP reference."""
        rows = []
        for name, data in self.prepared.items():
            t0 = time.perf_counter()
            out = suites.get(name).evaluate(self.model, self.tok, data, self.cfg, reference=self.refs[name])
            seconds = time.perf_counter() - t0
            rows += [{"eval_seconds": seconds, **r, "suite": name} for r in out.rows]
        return rows

    def common(self, run_id: str, study: str) -> dict:
        return {"run_id": run_id, "started_at": self.started_at, "git_sha": results.git_sha(),
                "model": self.cfg.model.name, "versions": results.versions(), "model_note": self.cfg.model.note,
                "experiment": study}
