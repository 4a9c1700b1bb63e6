"""The harness flow as plain functions: load → calibrate → quantize → evaluate → write."""
from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

import methods
from harness import calib as calib_mod
from harness import models, results
from harness.data import shipped_eval_texts
from harness.errors import HarnessError
from harness.eval import perplexity
from methods.quantizer import QuantSpec, QuantSpecError
from methods.targets import check_group_size, target_linears

SUITES = ("perplexity",)


def config_hash(cfg) -> str:
    """Hash of everything that changes the numbers (not run dirs or cache locations)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    d.pop("cache_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def validate_static(cfg) -> None:
    """Checks that need no model: fail before minutes of loading."""
    if cfg.method.name not in methods.available():
        raise HarnessError(f"unknown method {cfg.method.name!r}; available: {', '.join(methods.available())}")
    if cfg.calib.name not in calib_mod.CHOICES:
        raise HarnessError(f"unknown calibration set {cfg.calib.name!r}; choose one of: {', '.join(calib_mod.CHOICES)}")
    bad = [s for s in cfg.eval.suites if s not in SUITES]
    if bad:
        raise HarnessError(f"unknown eval suite {bad[0]!r}; available: {', '.join(SUITES)}")
    try:
        QuantSpec(cfg.method.bits, cfg.method.group_size, cfg.method.symmetric)
    except QuantSpecError as e:
        raise HarnessError(f"method.{e}") from None
    for t in eval_text_paths(cfg):
        perplexity.read_text(t)
    if cfg.calib.name == "file" and cfg.calib.path and not Path(cfg.calib.path).expanduser().is_file():
        raise HarnessError(f"calibration file not found: {cfg.calib.path}")


def eval_text_paths(cfg) -> list[Path]:
    return [Path(t).expanduser() for t in cfg.eval.texts] if cfg.eval.texts else shipped_eval_texts()


def _fp_cache_path(cfg, fp_id: str, text: perplexity.EvalText) -> Path:
    key = hashlib.sha256(fp_id.encode())
    key.update(text.windows.numpy().tobytes())
    return Path(cfg.cache_dir) / "fp_ppl" / f"{key.hexdigest()[:24]}.json"


def evaluate_perplexity(model, texts, cfg, label: str, cache_id: str | None = None) -> list[dict]:
    rows = []
    for text in texts:
        cache = _fp_cache_path(cfg, cache_id, text) if cache_id else None
        if cache is not None and cache.is_file():
            row = json.loads(cache.read_text())
        else:
            t0 = time.perf_counter()
            row = perplexity.evaluate(model, text, cfg.eval.batch_size, desc=f"{label}: {text.task}")
            row["eval_seconds"] = time.perf_counter() - t0
            if cache is not None:
                results.write_text(cache, json.dumps(row))
        rows.append({**row, "suite": "perplexity", "source": text.path})
    return rows


def run(cfg, out_dir: Path) -> "results.pd.DataFrame":
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    validate_static(cfg)

    t0 = time.perf_counter()
    model, tok = models.load(cfg.model)
    print(f"[harness] loaded {cfg.model.name} in {time.perf_counter() - t0:.1f}s "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)")

    spec = QuantSpec(cfg.method.bits, cfg.method.group_size, cfg.method.symmetric)
    if cfg.method.name != "fp":
        try:
            check_group_size(target_linears(model, cfg.method.quantize_lm_head), spec)
        except QuantSpecError as e:
            raise HarnessError(f"method.{e}") from None
    texts = [perplexity.prepare(p, tok, cfg.eval.seqlen, cfg.eval.max_windows) for p in eval_text_paths(cfg)]
    calib = calib_mod.load(cfg.calib, tok)

    rows = []
    if cfg.reference and cfg.method.name != "fp":
        fp_id = models.fingerprint(model) + f"|{cfg.eval.batch_size}"
        for r in evaluate_perplexity(model, texts, cfg, "fp", cache_id=fp_id):
            rows.append({**r, "method": "fp", "bits": 16, "group_size": -1, "quant_seconds": 0.0})

    result = methods.get(cfg.method.name).quantize(model, calib, cfg.method)
    if cfg.method.name != "fp":
        print(f"[harness] {cfg.method.name}: quantized in {result.seconds:.1f}s, peak RSS {result.peak_memory_mb:.0f} MB")
    quantized_bits = 16 if cfg.method.name == "fp" else cfg.method.bits
    for r in evaluate_perplexity(model, texts, cfg, cfg.method.name):
        rows.append({**r, "method": cfg.method.name, "bits": quantized_bits,
                     "group_size": -1 if cfg.method.name == "fp" else cfg.method.group_size,
                     "quant_seconds": result.seconds})

    common = {
        "run_id": out_dir.name, "started_at": started, "git_sha": results.git_sha(), "model": cfg.model.name,
        "calib": cfg.calib.name if cfg.calib.name != "file" else f"file:{Path(cfg.calib.path).name}",
        "calib_samples": calib.n_samples, "calib_seqlen": calib.seqlen, "config_hash": config_hash(cfg),
        "versions": results.versions(), "model_note": cfg.model.note,
    }
    return results.to_frame([{**common, **r} for r in rows]), result
