"""The FP reference: every suite's rows and reference state on the unquantized model, computed
once per session and cached on disk (keyed by the weights, the suite inputs and the eval config)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness import eval as suites
from harness import models


def digest(obj, h) -> None:
    """Feed a content hash of ``obj`` to ``h``, stable across processes (a pickle of a tensor is not)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().contiguous().cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__qualname__.encode())
        for f in dataclasses.fields(obj):
            h.update(f.name.encode())
            digest(getattr(obj, f.name), h)
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            digest(k, h)
            digest(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            digest(v, h)
        h.update(b"]")
    elif obj is None or isinstance(obj, (str, int, float, bool, bytes, Path)):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    else:
        h.update(pickle.dumps(obj, protocol=4))


def cache_path(cfg, fingerprint: str, suite: str, data) -> Path:
    key = hashlib.sha256(f"{fingerprint}|{suite}|".encode())
    digest(data, key)
    key.update(json.dumps(OmegaConf.to_container(cfg.eval, resolve=True), sort_keys=True).encode())
    return Path(cfg.cache_dir) / "fp_reference" / f"{suite}-{key.hexdigest()[:24]}.pt"


def model_id(model) -> str:
    fp_id = models.fingerprint(model)
    if model.device.type != "cpu":  # GPU arithmetic rounds differently; CPU keys stay as they were
        fp_id += f"|{model.device.type}"
    return fp_id


def suite_reference(model, tok, name: str, data, cfg, cache: Path):
    """One suite's FP output, from the cache or computed (and then cached atomically)."""
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    t0 = time.perf_counter()
    out = suites.evaluate(name, model, tok, data, cfg, reference=None)
    for r in out.rows:
        r.setdefault("eval_seconds", time.perf_counter() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(cache)
    return out


def evaluate_reference(model, tok, prepared: dict, cfg) -> tuple[list[dict], dict]:
    """FP rows (tagged with their suite) and the FP reference state of every suite."""
    fp_id = model_id(model)
    rows, refs = [], {}
    for name, data in prepared.items():
        out = suite_reference(model, tok, name, data, cfg, cache_path(cfg, fp_id, name, data))
        rows += [{**r, "suite": name} for r in out.rows]
        refs[name] = out.reference
    return rows, refs
