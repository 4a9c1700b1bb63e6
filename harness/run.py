"""The harness flow as plain functions: load → calibrate → quantize → evaluate → write."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

import methods
from harness import calib as calib_mod
from harness import models, results, sanity
from harness.errors import HarnessError
from harness import eval as suites
from harness.eval import perplexity
from methods.quantizer import QuantSpec, QuantSpecError
from methods.targets import check_group_size, spec_from, target_linears


def config_hash(cfg) -> str:
    """Hash of everything that changes the numbers (not run dirs or cache locations)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    d.pop("cache_dir", None)
    d.pop("store_dir", None)
    d.pop("resume", None)
    d.pop("export", None)
    device = models.resolve_device(d.get("model", {}).pop("device", "auto"))
    if device.type != "cpu":  # GPU kernels round differently; CPU runs keep the hashes they had before
        d["model"]["device"] = device.type
    if d.get("method", {}).get("name") == "fp":  # bits, groups, calibration do not touch the FP model
        d["method"] = {"name": "fp"}
        d.pop("calib", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def validate_static(cfg) -> None:
    """Checks that need no model: fail before minutes of loading."""
    models.resolve_device(cfg.model.device)
    if cfg.method.name not in methods.available():
        raise HarnessError(f"unknown method {cfg.method.name!r}; available: {', '.join(methods.available())}")
    check_installed = getattr(methods.get(cfg.method.name), "check_installed", None)  # optional peers
    if check_installed is not None:
        check_installed()
    if cfg.calib.name not in calib_mod.CHOICES:
        raise HarnessError(f"unknown calibration set {cfg.calib.name!r}; choose one of: {', '.join(calib_mod.CHOICES)}")
    for s in cfg.eval.suites:
        check = getattr(suites.get(s), "check_installed", None)  # a missing data package fails before loading
        if check is not None:
            check()
    try:
        spec_from(cfg.method)
    except QuantSpecError as e:
        raise HarnessError(f"method.{e}") from None
    for t in cfg.eval.texts:
        perplexity.read_text(Path(t).expanduser())
    if cfg.calib.name == "file" and cfg.calib.path and not Path(cfg.calib.path).expanduser().is_file():
        raise HarnessError(f"calibration file not found: {cfg.calib.path}")
    if cfg.export.dir:
        check_export(cfg)


def check_export(cfg) -> None:
    """An AWQ-GEMM checkpoint holds 4-bit grouped asymmetric-format weights in a fresh directory."""
    if cfg.method.name == "fp":
        raise HarnessError("export.dir needs a quantizing method (rtn, awq, gptq, ...), not method=fp")
    if cfg.method.bits != 4 or cfg.method.group_size < 1:
        raise HarnessError(f"export.dir writes 4-bit grouped AWQ-GEMM checkpoints; got method.bits={cfg.method.bits} "
                           f"method.group_size={cfg.method.group_size} (use bits=4 and a positive group size)")
    if cfg.method.quantize_lm_head:
        raise HarnessError("export.dir does not support method.quantize_lm_head=true (serving stacks expect an FP head)")
    out = Path(cfg.export.dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"export.dir={cfg.export.dir} already exists and is not an empty directory; "
                           "choose a new path (nothing is overwritten)")


def method_spec(method_cfg, model) -> QuantSpec:
    """The method's spec, with its group size checked against the model's Linears before quantizing."""
    try:
        spec = spec_from(method_cfg)
        check_group_size(target_linears(model, method_cfg.quantize_lm_head), spec)
    except QuantSpecError as e:
        raise HarnessError(f"method.{e}") from None
    return spec


def check_packable(model, cfg) -> None:
    """AWQ-GEMM packs 8 output columns per int32: refuse before minutes of quantizing, not after."""
    from kernels.pack import PACK

    bad = [n for n, m in target_linears(model, cfg.method.quantize_lm_head).items() if m.out_features % PACK]
    if bad:
        raise HarnessError(f"export.dir: {bad[0]} has out_features={model.get_submodule(bad[0]).out_features}, "
                           f"not a multiple of {PACK}; the AWQ-GEMM layout cannot hold it (drop export.dir)")


def export_quantized(model, tok, result, cfg) -> Path:
    """Pack the quantized weights into QuantLinear layers and write the checkpoint atomically
    (a temporary sibling directory renamed into place)."""
    import shutil
    import tempfile

    from kernels.export import export_checkpoint

    out = Path(cfg.export.dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        export_checkpoint(model, tok, result.qweights, cfg.method.group_size, tmp)
        if out.exists():
            out.rmdir()  # check_export allowed only an empty directory
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _digest(obj, h) -> None:
    """Feed a content hash of ``obj`` to ``h``, stable across processes (a pickle of a tensor is not)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().contiguous().cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__qualname__.encode())
        for f in dataclasses.fields(obj):
            h.update(f.name.encode())
            _digest(getattr(obj, f.name), h)
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            _digest(k, h)
            _digest(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest(v, h)
        h.update(b"]")
    elif obj is None or isinstance(obj, (str, int, float, bool, bytes, Path)):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    else:
        h.update(pickle.dumps(obj, protocol=4))


def _reference_cache(cfg, fingerprint: str, suite: str, data) -> Path:
    key = hashlib.sha256(f"{fingerprint}|{suite}|".encode())
    _digest(data, key)
    key.update(json.dumps(OmegaConf.to_container(cfg.eval, resolve=True), sort_keys=True).encode())
    return Path(cfg.cache_dir) / "fp_reference" / f"{suite}-{key.hexdigest()[:24]}.pt"


def evaluate_fp_reference(model, tok, prepared: dict, cfg) -> tuple[list[dict], dict]:
    """FP rows and FP reference state for every suite, from the cache when the same weights and
    inputs were evaluated before."""
    fp_id = models.fingerprint(model)
    if model.device.type != "cpu":  # GPU arithmetic rounds differently; CPU keys stay as they were
        fp_id += f"|{model.device.type}"
    rows, refs = [], {}
    for name, data in prepared.items():
        cache = _reference_cache(cfg, fp_id, name, data)
        if cache.is_file():
            out = torch.load(cache, weights_only=False)
        else:
            t0 = time.perf_counter()
            out = suites.get(name).evaluate(model, tok, data, cfg, reference=None)
            for r in out.rows:
                r.setdefault("eval_seconds", time.perf_counter() - t0)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(out, tmp)
            tmp.replace(cache)
        rows += [{**r, "suite": name} for r in out.rows]
        refs[name] = out.reference
    return rows, refs


def run(cfg, out_dir: Path):
    """Run one configuration; returns (results DataFrame, QuantResult)."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    validate_static(cfg)

    t0 = time.perf_counter()
    model, tok = models.load(cfg.model)
    print(f"[harness] loaded {cfg.model.name} in {time.perf_counter() - t0:.1f}s "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)")

    method = cfg.method.name
    if method != "fp":
        method_spec(cfg.method, model)
        if cfg.export.dir:
            check_packable(model, cfg)
    prepared = {name: suites.get(name).prepare(tok, cfg) for name in cfg.eval.suites}
    calib = calib_mod.load(cfg.calib, tok)

    rows = []
    fp_rows, refs = evaluate_fp_reference(model, tok, prepared, cfg)
    if cfg.reference or method == "fp":
        rows += [{**r, "method": "fp", "bits": 16, "group_size": -1, "quant_seconds": 0.0} for r in fp_rows]

    if method != "fp":
        try:
            result = methods.get(method).quantize(model, calib, cfg.method)
        except QuantSpecError as e:  # e.g. an architecture without a layer mapping
            raise HarnessError(f"method={method}: {e}") from None
        print(f"[harness] {method}: quantized in {result.seconds:.1f}s, peak RSS {result.peak_memory_mb:.0f} MB")
        guard = sanity.check(model, tok, prepared, fp_rows, cfg, method)
        if guard is not None:
            print(f"[harness] {method}: {guard.summary()}")
        for name, data in prepared.items():
            t1 = time.perf_counter()
            out = suites.get(name).evaluate(model, tok, data, cfg, reference=refs[name])
            seconds = time.perf_counter() - t1
            rows += [{"eval_seconds": seconds, **r, "suite": name, "method": method, "bits": cfg.method.bits,
                      "group_size": cfg.method.group_size, "quant_seconds": result.seconds} for r in out.rows]
    else:
        result = methods.get("fp").quantize(model, calib, cfg.method)
    size = results.size_columns(model, cfg.method)  # before export swaps the Linears for packed layers
    if cfg.export.dir:
        t1 = time.perf_counter()
        try:
            where = export_quantized(model, tok, result, cfg)
        except (ValueError, OSError) as e:
            raise HarnessError(f"export.dir={cfg.export.dir}: {e}") from None
        print(f"[harness] exported AWQ-GEMM checkpoint to {where} in {time.perf_counter() - t1:.1f}s")

    common = {
        "run_id": out_dir.name, "started_at": started, "git_sha": results.git_sha(), "model": cfg.model.name,
        "calib": cfg.calib.name if cfg.calib.name != "file" else f"file:{Path(cfg.calib.path).name}",
        "calib_samples": calib.n_samples, "calib_seqlen": calib.seqlen, "config_hash": config_hash(cfg),
        "versions": results.versions(), "model_note": cfg.model.note, **size,
    }
    return results.to_frame([{**common, **r} for r in rows]), result
