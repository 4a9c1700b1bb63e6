"""The one pipeline: load the model once, prepare the suites and the FP reference once, then run
every variant of a plan from the same pristine weights, storing each as soon as it finishes.

A plain run, ``variants=[...]``, each job of a ``--multirun`` and every study go through here.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

import methods
from harness import calib as calib_mod
from harness import checks, models, results, sanity, store
from harness import eval as suites
from harness.config_hash import config_hash
from harness.errors import HarnessError
from harness.exporting import export_quantized
from harness.plan import Variant, options_label, variant_config
from harness.reference import evaluate_reference
from methods import capture, onload
from methods.quantizer import QuantSpecError

REFERENCE_COLUMNS = {"bits": 16, "group_size": -1, "calib": "none", "calib_samples": 0, "calib_seqlen": 0,
                     "calib_seed": None, "method_options": ""}


@dataclass
class Outcome:
    """What one variant produced: its rows, its per-layer evidence and the method's result."""
    rows: pd.DataFrame
    layers: pd.DataFrame
    result: Any = None  # methods.QuantResult; None when the rows came from the store


@dataclass
class Session:
    cfg: Any
    model: torch.nn.Module
    tok: Any
    prepared: dict
    fp_rows: list[dict]
    refs: dict
    started_at: str
    guard: sanity.Guard | None = None
    snapshot: dict = field(repr=False, default_factory=dict)  # pristine master weights, on the CPU
    tied_head: bool = False
    compute_dtype: str = "fp32"  # what every forward pass of evaluation runs in (models.COMPUTE_DTYPES)
    quantized_master: dict | None = field(repr=False, default=None)  # kept only when export needs it
    timings: dict = field(default_factory=dict)  # seconds of the shared stages (harness.bench reads them)
    buffers: dict = field(repr=False, default_factory=dict)  # computed buffers at full precision (models.cast)

    @classmethod
    def open(cls, cfg, plan: list[Variant]) -> "Session":
        """Check the config, load the model once, prepare every suite and the FP reference."""
        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(cfg.seed)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        checks.validate_static(cfg, plan)
        checks.check_shapes(cfg.model, plan, cfg.export)
        t0 = time.perf_counter()
        model, tok = models.load(cfg.model)
        timings = {"load model": time.perf_counter() - t0}
        print(f"[harness] loaded {cfg.model.name} once in {timings['load model']:.1f}s "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params) for {len(plan)} variant(s)")
        checks.check_loaded(model, plan, cfg.export)
        # a CPU copy of the original weights: restoring it is much cheaper than reloading the model
        # (an offloaded model keeps them in its homes: methods/onload.py)
        snapshot = {} if onload.offloaded(model) else {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        compute = models.resolve_compute_dtype(cfg.model.compute_dtype, model.device)
        buffers = models.computed_buffers(model)
        models.cast(model, models.COMPUTE_DTYPES[compute], buffers)
        print(f"[harness] evaluation runs in {compute} (model.compute_dtype={cfg.model.compute_dtype}); "
              f"methods quantize {cfg.model.dtype} master weights")
        t0 = time.perf_counter()
        prepared = {name: suites.prepare(name, tok, cfg) for name in cfg.eval.suites}
        timings["prepare suites"] = time.perf_counter() - t0
        guard = sanity.Guard.open(model, tok, prepared, cfg, cfg.model.name)  # a broken FP model stops here
        fp_rows, refs = evaluate_reference(model, tok, prepared, cfg)
        return cls(cfg, model, tok, prepared, fp_rows, refs, started, guard, snapshot, head_is_tied(model), compute,
                   timings=timings, buffers=buffers)

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the loaded master weights (a method may have untied the output head to quantize it)."""
        models.cast(self.model, models.DTYPES[self.cfg.model.dtype], self.buffers)
        if onload.offloaded(self.model):
            onload.reset(self.model)
        else:
            self.model.load_state_dict(self.snapshot)
        if self.tied_head and not head_is_tied(self.model):
            self.model.get_output_embeddings().weight = self.model.get_input_embeddings().weight
            self.model.config.tie_word_embeddings = True

    def evaluate(self) -> list[dict]:
        """Every suite on the model as it is now, scored against the FP reference."""
        rows = []
        for name, data in self.prepared.items():
            t0 = time.perf_counter()
            out = suites.evaluate(name, self.model, self.tok, data, self.cfg, reference=self.refs[name])
            seconds = time.perf_counter() - t0
            rows += [{"eval_seconds": seconds, **r, "suite": name} for r in out.rows]
        return rows

    def evaluate_checked(self, method: str) -> list[dict]:
        """The suites on a quantized model that passed the guard, and only rows the guard accepts."""
        if self.guard is None:
            return self.evaluate()
        print(f"[harness] {method}: {self.guard.check_model(self.model, method).summary()}")
        rows = self.evaluate()
        self.guard.check_rows(rows, self.fp_rows, method)
        return rows

    def quantize(self, v: Variant):
        """The variant's method on pristine weights, with its calibration windows when it reads any."""
        self.restore()
        calib = calib_mod.load(v.calib, self.tok) if v.entry.calibrated else None
        try:  # calibration passes in the compute dtype, quantization arithmetic on the fp32 master weights
            with capture.forward_dtype(models.COMPUTE_DTYPES[self.compute_dtype]):
                result = v.entry.method.quantize(self.model, calib, v.method)
        except (QuantSpecError, methods.MethodError) as e:  # e.g. an architecture without a layer mapping
            raise HarnessError(f"method={v.name}: {e}") from None
        if not v.entry.reference:
            print(f"[harness] {v.name}: quantized in {result.seconds:.1f}s, peak RSS {result.peak_memory_mb:.0f} MB")
        if exports(self.cfg, v):  # export writes from master weights, not bf16 ones
            self.quantized_master = {k: t.detach().to("cpu", copy=True) for k, t in self.model.state_dict().items()}
        models.cast(self.model, models.COMPUTE_DTYPES[self.compute_dtype], self.buffers)
        return result, calib

    def run_variant(self, v: Variant, run_id: str) -> Outcome:
        result, calib = self.quantize(v)
        if v.entry.reference:
            rows = [dict(r) for r in self.fp_rows]
        else:
            rows = self.evaluate_checked(v.name)
        rows += [dict(r) for r in result.rows]  # what the method measured itself (e.g. salience's output error)
        tags = self.variant_columns(v, run_id, result, calib)
        frame = results.to_frame([{**tags, **r} for r in rows])
        return Outcome(frame, layer_frame(result, tags), result)

    def variant_columns(self, v: Variant, run_id: str, result, calib) -> dict:
        """The columns every row of a variant carries (result schema in harness/results.py)."""
        cfg_v = variant_config(self.cfg, v)
        cols = {"run_id": run_id, "started_at": self.started_at, "git_sha": results.git_sha(),
                "model": self.cfg.model.name, "model_note": self.cfg.model.note, "versions": results.versions(),
                "method": v.name, "bits": v.method.bits, "group_size": v.method.group_size,
                "quant_seconds": result.seconds, "config_hash": config_hash(cfg_v), "compute_dtype": self.compute_dtype,
                "offload": self.cfg.model.offload, "method_options": options_label(v.method),
                **calib_columns(v.calib, calib), **results.size_columns(self.model, v.method)}
        if v.entry.reference:
            cols.update(REFERENCE_COLUMNS)
        return {**cols, **v.columns}

    @torch.no_grad()
    def export(self, v: Variant, result) -> None:
        models.cast(self.model, models.DTYPES[self.cfg.model.dtype], self.buffers)
        self.model.load_state_dict(self.quantized_master)
        t0 = time.perf_counter()
        done = export_quantized(self.model, self.tok, result, v.method, self.cfg.export)
        print(f"[harness] {done.describe()} in {time.perf_counter() - t0:.1f}s")


def exports(cfg, v: Variant) -> bool:
    """Whether this variant is the one written to ``export.dir``."""
    return bool(cfg.export.dir) and not v.entry.reference


def head_is_tied(model) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and emb is not None and head.weight is emb.weight


def calib_columns(calib_cfg, calib) -> dict:
    """Calibration columns: the set actually drawn, or what the config names for methods that read none."""
    label = calib_cfg.name if calib_cfg.name != "file" else f"file:{Path(calib_cfg.path or '').name}"
    if calib is None:
        return {"calib": label, "calib_samples": calib_cfg.n_samples, "calib_seqlen": calib_cfg.seqlen,
                "calib_seed": None}  # no sample drawn: the seed cannot matter
    return {"calib": label, "calib_samples": calib.n_samples, "calib_seqlen": calib.seqlen, "calib_seed": calib_cfg.seed}


def layer_frame(result, tags: dict) -> pd.DataFrame:
    """``QuantResult.layers`` as rows keyed like results.LAYER_KEY (evidence: α, loss vs RTN, ...)."""
    key = {k: tags[k] for k in results.LAYER_KEY if k != "layer"}
    return pd.DataFrame([{**key, **layer} for layer in result.layers], columns=None if result.layers else results.LAYER_KEY)


def stored_outcome(cfg, v: Variant) -> Outcome | None:
    """The variant's rows from the store when an earlier run finished it (a resumed sweep)."""
    found = store.completed(cfg.store_dir, config_hash(variant_config(cfg, v)))
    if found is None:
        return None
    print(f"[harness] skip {v.name}: config already complete in {found}")
    return Outcome(pd.read_parquet(found), pd.DataFrame(columns=results.LAYER_KEY))


def run(cfg, plan: list[Variant], run_id: str, resume: bool) -> list[Outcome]:
    """Every variant of the plan, in order; each is stored when it finishes, so kill -9 loses at most
    the variant in progress and a resumed run (``resume``) redoes only the unfinished ones."""
    done = {i: o for i, v in enumerate(plan) if resume and (o := stored_outcome(cfg, v)) is not None}
    if len(done) == len(plan):
        return [done[i] for i in range(len(plan))]
    session = Session.open(cfg, plan)
    outcomes = []
    for i, v in enumerate(tqdm(plan, desc="variants", unit="variant", disable=len(plan) < 2)):
        if i in done:
            outcomes.append(done[i])
            continue
        out = session.run_variant(v, run_id)
        if exports(cfg, v):
            session.export(v, out.result)
        store.append(out.rows, cfg.store_dir, v.name)
        outcomes.append(out)
    return outcomes


def combined(outcomes: list[Outcome]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One results table and one layers table over the variants."""
    rows = pd.concat([o.rows for o in outcomes], ignore_index=True)
    layers = [o.layers for o in outcomes if not o.layers.empty]
    return rows, (pd.concat(layers, ignore_index=True) if layers else pd.DataFrame(columns=results.LAYER_KEY))
