"""Checks that turn a user's mistake into one line, as early as each can run: before the model
loads when the config alone decides, right after loading when the model's shapes do."""
from __future__ import annotations

import os
from pathlib import Path

import methods
from harness import calib as calib_mod
from harness import eval as suites
from harness import hub_data, models, offloading
from harness.data import eval_text_path
from harness.errors import HarnessError
from harness.textfiles import check_long_enough
from harness.eval import perplexity
from methods.quantizer import QuantSpec, QuantSpecError
from methods.targets import check_group_size, spec_from, target_linears


def method_entry(method_cfg):
    try:
        entry = methods.entry(method_cfg.name)
        entry.method.check_installed()  # optional peers: a missing package fails before loading
    except methods.MethodError as e:
        raise HarnessError(str(e)) from None
    return entry


def check_method(method_cfg) -> None:
    entry = method_entry(method_cfg)
    try:
        methods.check_choices(method_cfg)
        entry.method.check_config(method_cfg)
    except methods.MethodError as e:
        raise HarnessError(str(e)) from None
    try:
        spec_from(method_cfg)
    except QuantSpecError as e:
        raise HarnessError(f"method.{e}") from None


def check_suites(cfg) -> None:
    for s in cfg.eval.suites:
        suites.check_installed(s)  # a missing data package fails before loading
    for t in cfg.eval.texts:
        path = eval_text_path(t)
        perplexity.read_text(path)
        if not hub_data.is_hub(path):
            check_long_enough(path, cfg.eval.seqlen, "eval text", "eval.seqlen")


def check_writable(path, what: str, keep: bool = True) -> None:
    """Create ``path`` if needed and write and remove a probe file in it: a directory the run cannot
    write fails now, not after hours of computing. ``keep=False`` removes the directories it made."""
    p = Path(path).expanduser().absolute()
    made = [d for d in (p, *p.parents) if not d.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise HarnessError(f"{what}={path} is not a writable directory ({e.strerror or e})") from None
    finally:
        for d in made if not keep else ():
            try:
                d.rmdir()
            except OSError:
                pass


def validate_static(cfg, plan) -> None:
    """Checks that need no model: fail before minutes of loading."""
    models.check_source(cfg.model)
    models.resolve_compute_dtype(cfg.model.compute_dtype, models.resolve_device(cfg.model.device))
    offloading.check(cfg.model, plan, cfg.export.dir)
    for v in plan:
        check_method(v.method)
        if not v.entry.reference:  # a bad calibration option is a mistake even where the method reads none
            calib_mod.check(v.calib)
    check_suites(cfg)
    check_writable(cfg.store_dir, "store_dir")
    check_writable(cfg.cache_dir, "cache_dir")
    if cfg.model.offload == "disk":  # changed layers are written there
        check_writable(models.offload_root(cfg.model), "model.offload_dir")
    if cfg.export.dir:
        check_export(cfg.export, export_variant(plan).method)


def export_variant(plan):
    """The one variant export.dir writes: the quantized one (the FP reference may run beside it)."""
    quantized = [v for v in plan if not v.entry.reference]
    if len(quantized) > 1:
        raise HarnessError("export.dir writes one checkpoint: run a single method, not a list of variants")
    return (quantized or plan)[0]


def check_export(export_cfg, method_cfg) -> None:
    """An AWQ-GEMM or GPTQ checkpoint holds 4-bit grouped asymmetric-format weights in a fresh directory."""
    from kernels.export import FORMATS

    if export_cfg.format not in FORMATS:
        raise HarnessError(f"unknown export.format {export_cfg.format!r}; choose one of: {', '.join(FORMATS)}")
    if export_cfg.dtype not in models.COMPUTE_DTYPES:
        raise HarnessError(f"unknown export.dtype {export_cfg.dtype!r}; choose one of: {', '.join(models.COMPUTE_DTYPES)}")
    entry = methods.entry(method_cfg.name)
    if entry.reference:
        raise HarnessError(f"export.dir needs a quantizing method (rtn, awq, gptq, ...), not method={method_cfg.name}")
    problem = entry.method.export_problem(method_cfg)
    if problem:
        raise HarnessError(f"export.dir: {problem}")
    if method_cfg.bits != 4 or method_cfg.group_size < 1:
        raise HarnessError(f"export.dir writes 4-bit grouped AWQ-GEMM checkpoints; got method.bits={method_cfg.bits} "
                           f"method.group_size={method_cfg.group_size} (use bits=4 and a positive group size)")
    if method_cfg.quantize_lm_head:
        raise HarnessError("export.dir does not support method.quantize_lm_head=true (serving stacks expect an FP head)")
    out = Path(export_cfg.dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"export.dir={export_cfg.dir} already exists and is not an empty directory; "
                           "choose a new path (nothing is overwritten)")


def method_spec(method_cfg, model) -> QuantSpec:
    """The method's spec, with its group size checked against the model's Linears before quantizing."""
    try:
        spec = spec_from(method_cfg)
        check_group_size(target_linears(model, method_cfg.quantize_lm_head), spec)
    except QuantSpecError as e:
        raise HarnessError(f"method.{e}") from None
    return spec


def check_packable(model, method_cfg) -> None:
    """AWQ-GEMM packs 8 output columns per int32: refuse before minutes of quantizing, not after."""
    from kernels.pack import PACK

    bad = [n for n, m in target_linears(model, method_cfg.quantize_lm_head).items() if m.out_features % PACK]
    if bad:
        raise HarnessError(f"export.dir: {bad[0]} has out_features={model.get_submodule(bad[0]).out_features}, "
                           f"not a multiple of {PACK}; the AWQ-GEMM layout cannot hold it (drop export.dir)")


def check_shapes(model_cfg, plan, export_cfg) -> None:
    """The shape checks on the model's skeleton (config only, meta device): before the weights load."""
    skeleton = models.skeleton(model_cfg)
    if skeleton is not None:
        check_loaded(skeleton, plan, export_cfg)


def check_loaded(model, plan, export_cfg) -> None:
    """Checks that need the model's shapes (before any suite or method runs)."""
    for v in plan:
        if not v.entry.reference:
            method_spec(v.method, model)
    if export_cfg.dir:
        check_packable(model, export_variant(plan).method)
