"""Write and read 4-bit checkpoints in the AWQ-GEMM layout (AutoAWQ, transformers, vLLM) or the GPTQ
layout (AutoGPTQ / GPTQModel ``checkpoint_format="gptq"``, vLLM ``gptq``).

A checkpoint directory holds
    model.safetensors  ``<module>.qweight/.qzeros/.scales`` (+ ``.g_idx`` in GPTQ, + ``.bias``) for
                       every quantized Linear (fp16 scales) and every other parameter/buffer under its
                       usual name in the export dtype; a tied output head is stored once, as the
                       input embedding
    config.json        the model config with ``quantization_config`` (:func:`quantization_config`)
                       and ``dtype``/``torch_dtype`` naming the export dtype
    tokenizer files    whatever ``tokenizer.save_pretrained`` writes
Directories are written 0777 and files 0666 less the process umask (0755/0644 under the usual 022),
so a server running as another user can read them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from kernels.pack import PACK, AWQTensors, PackError, pack_awq, pack_gptq, unpack_gptq
from kernels.qlinear import QuantLinear, replace_linears
from methods.quantizer import QuantizedWeight

WEIGHTS_NAME = "model.safetensors"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
QUANT_TENSORS = ("qweight", "qzeros", "scales")
GPTQ_TENSORS = (*QUANT_TENSORS, "g_idx")
FORMATS = ("awq", "gptq")
SCALE_DTYPES = (torch.float16, torch.bfloat16)  # scales as written by AutoAWQ (fp16) and GPTQModel on CPU (bf16)
EXPORT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed at init; older checkpoints still carry it


class CheckpointError(ValueError):
    """A checkpoint directory that is not a well-formed 4-bit AWQ-GEMM checkpoint."""


def awq_quantization_config(group_size: int) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}


def gptq_quantization_config(group_size: int) -> dict:
    """GPTQ v1 layout (zero points stored minus one), no act-order, asymmetric."""
    return {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": False, "sym": False,
            "checkpoint_format": "gptq"}


def quantization_config(fmt: str, group_size: int) -> dict:
    return awq_quantization_config(group_size) if fmt == "awq" else gptq_quantization_config(group_size)


# ----------------------------------------------------------------------------------------------
# export


def _tied_configs(model: nn.Module):
    cfgs = {id(c): c for c in (model.config, model.config.get_text_config())}
    return list(cfgs.values())


def _head_is_tied(model: nn.Module) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return (isinstance(head, nn.Linear) and emb is not None and head.weight is emb.weight
            and any(getattr(c, "tie_word_embeddings", False) for c in _tied_configs(model)))


def _tensors_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous tensors, a tied head stored only as the embedding."""
    head_key = None
    if _head_is_tied(model):
        head = model.get_output_embeddings()
        head_key = next(n for n, m in model.named_modules() if m is head) + ".weight"
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        if name == head_key:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        # safetensors refuses shared storage: any other sharing is written out as a copy
        tensors[name] = t.detach().clone().contiguous() if key in seen else t.detach().contiguous()
        seen.add(key)
    return tensors


def _check_qweights(qweights: dict[str, QuantizedWeight], group_size: int) -> None:
    if not qweights:
        raise ValueError("export_checkpoint: qweights is empty; quantize the model first (QuantResult.qweights)")
    for name, qw in qweights.items():
        in_features = qw.codes.shape[-1]
        if qw.spec.bits != 4:
            raise ValueError(f"export_checkpoint: {name} is {qw.spec.bits}-bit; AWQ-GEMM/GPTQ checkpoints are 4-bit only")
        if qw.spec.group_len(in_features) != group_size:
            raise ValueError(f"export_checkpoint: {name} was quantized with group size "
                             f"{qw.spec.group_len(in_features)}, not group_size={group_size}")


def _check_export_args(dtype: torch.dtype, fmt: str) -> None:
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export_checkpoint: dtype {dtype} is not one of {', '.join(map(str, EXPORT_DTYPES))}")
    if fmt not in FORMATS:
        raise ValueError(f"export_checkpoint: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _cast_plain(tensors: dict[str, torch.Tensor], packed: set[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every floating tensor but the packed layers' scales in ``dtype``; one that overflows it is refused."""
    out = {}
    for name, t in tensors.items():
        if name in packed or not t.is_floating_point() or t.dtype == dtype:
            out[name] = t
            continue
        cast = t.to(dtype)
        if bool(torch.isfinite(t).all()) and not bool(torch.isfinite(cast).all()):
            raise ValueError(f"export_checkpoint: {name} does not fit in {dtype} (a value beyond its range); "
                             "export in bfloat16 or float32")
        out[name] = cast
    return out


@torch.no_grad()
def _round_in_memory(model: nn.Module, packed: set[str], dtype: torch.dtype) -> None:
    """Round the model's own unquantized tensors to ``dtype`` (keeping their dtype): afterwards the
    model in memory computes exactly what the checkpoint holds."""
    for name, t in model.state_dict().items():
        if name not in packed and t.is_floating_point() and t.dtype != dtype:
            t.copy_(t.to(dtype))


def _as_gptq(tensors: dict[str, torch.Tensor], qweights: dict[str, QuantizedWeight]) -> dict[str, torch.Tensor]:
    """Replace each layer's AWQ-GEMM tensors by the GPTQ (v1) ones."""
    for name, qw in qweights.items():
        for part in QUANT_TENSORS:
            del tensors[f"{name}.{part}"]
        packed = pack_gptq(qw)
        tensors.update({f"{name}.{part}": t.contiguous() for part, t in zip(GPTQ_TENSORS, packed)})
    return tensors


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(out: Path) -> None:
    """Directories 0777 and files 0666 less the umask, from ``out`` down (mkdtemp and safetensors'
    save_file create 0700/0600, which a server running as another user cannot read)."""
    mask = _umask()
    for p in (out, *out.rglob("*")):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _write_config(model: nn.Module, out: Path, fmt: str, group_size: int, dtype: torch.dtype) -> None:
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # e.g. the "gguf" one of a model read from a GGUF file
    config["quantization_config"] = quantization_config(fmt, group_size)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = config["torch_dtype"] = dtype_name(dtype)  # transformers 5 reads dtype, older ones torch_dtype
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


def export_checkpoint(model: nn.Module, tokenizer, qweights: dict[str, QuantizedWeight], group_size: int,
                      out_dir, dtype: torch.dtype = torch.float16, fmt: str = "awq") -> Path:
    """Replace the quantized Linears of ``model`` by ``QuantLinear`` (in place) and write the checkpoint:
    layout ``fmt`` (awq | gptq), the unquantized tensors in ``dtype``, scales fp16. The model's own
    unquantized tensors are rounded to ``dtype`` too, so it then computes what the file holds."""
    from safetensors.torch import save_file

    _check_qweights(qweights, group_size)
    _check_export_args(dtype, fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    replace_linears(model, qweights)
    packed = {f"{n}.scales" for n in qweights}
    tensors = _cast_plain(_tensors_to_save(model), packed, dtype)
    _round_in_memory(model, packed, dtype)
    if fmt == "gptq":
        tensors = _as_gptq(tensors, qweights)
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    _write_config(model, out, fmt, group_size, dtype)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    make_readable(out)
    return out


def checkpoint_bytes(path) -> dict[str, int]:
    """``files``: every file of the checkpoint; ``tensors``: the weights' tensor data (safetensors
    files less their headers)."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()]
    tensors = 0
    for f in path.glob("*.safetensors"):
        with f.open("rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
        tensors += f.stat().st_size - 8 - header
    return {"files": sum(p.stat().st_size for p in files), "tensors": tensors}


# ----------------------------------------------------------------------------------------------
# load


def _check_awq_fields(qc: dict) -> None:
    if str(qc.get("version", "")).lower() != "gemm":
        raise CheckpointError(f"quantization_config.version={qc.get('version')!r} is not supported; only 'gemm' "
                              "(GEMV/Marlin/exllama layouts pack differently)")
    if qc.get("zero_point") is not True:
        raise CheckpointError(f"quantization_config.zero_point={qc.get('zero_point')!r}; only zero_point=true is supported")


def _check_gptq_fields(qc: dict) -> None:
    if qc.get("desc_act", False) is not False:
        raise CheckpointError(f"quantization_config.desc_act={qc.get('desc_act')!r}; only desc_act=false "
                              "(no act-order) GPTQ checkpoints are supported")
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    if fmt != "gptq":
        raise CheckpointError(f"quantization_config.checkpoint_format={qc.get('checkpoint_format')!r} is not "
                              "supported; only 'gptq' (v1 zero points)")


def checkpoint_format(qc) -> str:
    """``awq`` or ``gptq``: the layout a ``quantization_config`` names (validated by check_quantization_config)."""
    return str(qc.get("quant_method", "")).lower()


def check_quantization_config(qc) -> int:
    """Validate an AWQ-GEMM or GPTQ (v1, no act-order) ``quantization_config``; returns its group size."""
    want = ("expected " + json.dumps(awq_quantization_config("<g>")) + " or "
            + json.dumps(gptq_quantization_config("<g>")))
    if not isinstance(qc, dict):
        raise CheckpointError(f"config.json has no quantization_config dict ({want})")
    if checkpoint_format(qc) not in FORMATS:
        raise CheckpointError(f"quantization_config.quant_method={qc.get('quant_method')!r} is not supported; {want}")
    if qc.get("bits") != 4:
        raise CheckpointError(f"quantization_config.bits={qc.get('bits')!r} is not supported; only 4-bit AWQ/GPTQ")
    (_check_awq_fields if checkpoint_format(qc) == "awq" else _check_gptq_fields)(qc)
    g = qc.get("group_size")
    if not isinstance(g, int) or isinstance(g, bool) or g < 1:
        raise CheckpointError(f"quantization_config.group_size={g!r} must be a positive integer")
    return g


def _read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        config = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON ({e})") from None
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"model_type={config.get('model_type')!r} is not supported; "
                              f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return config


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no *.safetensors weights")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def _empty_model(path: Path, dtype: torch.dtype | None) -> nn.Module:
    """The architecture with parameters on the meta device (buffers such as RoPE tables are real)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # we build the quantized layers ourselves
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)


def _expect(name: str, t: torch.Tensor | None, shape: tuple, dtypes: tuple) -> torch.Tensor:
    if t is None:
        raise CheckpointError(f"missing tensor {name}")
    if tuple(t.shape) != shape:
        raise CheckpointError(f"tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
    if t.dtype not in dtypes:
        raise CheckpointError(f"tensor {name} has dtype {t.dtype}, expected {' or '.join(map(str, dtypes))}")
    return t


def _layer_shapes(fmt: str, k: int, n: int, g: int) -> dict:
    ints = (torch.int32,)
    if fmt == "awq":
        return {"qweight": ((k, n // PACK), ints), "qzeros": ((k // g, n // PACK), ints), "scales": ((k // g, n), SCALE_DTYPES)}
    return {"qweight": ((k // PACK, n), ints), "qzeros": ((k // g, n // PACK), ints), "scales": ((k // g, n), SCALE_DTYPES),
            "g_idx": ((k,), ints)}


def _packed(name: str, tensors: dict, fmt: str, k: int, n: int, g: int) -> AWQTensors:
    """The layer's tensors (removed from ``tensors``) as AWQ-GEMM ones; GPTQ is repacked, scales kept as stored."""
    if fmt == "gptq" and k % PACK:
        raise CheckpointError(f"in_features={k} of {name} is not a multiple of {PACK} (GPTQ packs 8 rows per int32)")
    parts = {part: _expect(f"{name}.{part}", tensors.pop(f"{name}.{part}", None), *spec)
             for part, spec in _layer_shapes(fmt, k, n, g).items()}
    if fmt == "awq":
        return AWQTensors(parts["qweight"], parts["qzeros"], parts["scales"])
    try:
        awq = pack_awq(unpack_gptq(parts["qweight"], parts["qzeros"], parts["scales"], parts["g_idx"]))
    except PackError as e:
        raise CheckpointError(f"{name}: {e}") from None
    return AWQTensors(awq.qweight, awq.qzeros, parts["scales"])


def _quant_linear(model: nn.Module, name: str, tensors: dict, fmt: str, group_size: int, dtype) -> QuantLinear:
    """Build the ``QuantLinear`` for module ``name`` from (and remove) its tensors."""
    try:
        linear = model.get_submodule(name)
    except AttributeError:
        linear = None
    if not isinstance(linear, nn.Linear):
        raise CheckpointError(f"tensor {name}.qweight does not belong to a Linear layer of {type(model).__name__}")
    k, n = linear.in_features, linear.out_features
    if k % group_size:
        raise CheckpointError(f"group_size={group_size} does not divide in_features={k} of {name}")
    if n % PACK:
        raise CheckpointError(f"out_features={n} of {name} is not a multiple of {PACK}")
    packed = _packed(name, tensors, fmt, k, n, group_size)
    bias = None
    if linear.bias is not None:
        bias = tensors.pop(f"{name}.bias", None)
        if bias is None:
            raise CheckpointError(f"missing tensor {name}.bias")
        if tuple(bias.shape) != (n,):
            raise CheckpointError(f"tensor {name}.bias has shape {list(bias.shape)}, expected [{n}]")
        bias = bias.to(dtype) if dtype is not None else bias
    return QuantLinear.from_packed(packed, group_size, bias)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _load_plain(model: nn.Module, tensors: dict, dtype) -> None:
    """Assign every remaining parameter/buffer, checking names and shapes first."""
    expected = {k: v for k, v in model.state_dict().items() if v.is_meta}
    unexpected = [k for k in tensors if k not in expected and not k.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointError(f"unexpected tensor(s) not in {type(model).__name__}: {', '.join(sorted(unexpected)[:5])}"
                              + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    state = {}
    for name, t in tensors.items():
        if name not in expected:
            continue
        want = expected[name]
        if tuple(t.shape) != tuple(want.shape):
            raise CheckpointError(f"tensor {name} has shape {list(t.shape)}, expected {list(want.shape)}")
        if t.is_floating_point() != want.is_floating_point():
            raise CheckpointError(f"tensor {name} has dtype {t.dtype}, expected a {want.dtype}-like tensor")
        state[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    model.load_state_dict(state, strict=False, assign=True)


def _tie_head(model: nn.Module) -> None:
    """A missing head weight of a tied-embedding model is the input embedding."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = any(getattr(c, "tie_word_embeddings", False) for c in _tied_configs(model))
    if tied and isinstance(head, nn.Linear) and head.weight.is_meta and emb is not None and not emb.weight.is_meta:
        head.weight = emb.weight


def _check_nothing_missing(model: nn.Module) -> None:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise CheckpointError(f"missing tensor {name}")


def _scales_dtype(model: nn.Module, names) -> torch.dtype:
    found = {model.get_submodule(n).scales.dtype for n in names}
    if len(found) > 1:
        raise CheckpointError(f"scales mix {' and '.join(sorted(map(str, found)))}; a checkpoint stores one scale dtype")
    return found.pop()


def load_checkpoint(path, dtype: torch.dtype | None = None, device="cpu"):
    """Read an AWQ-GEMM or GPTQ checkpoint (ours, AutoAWQ's, GPTQModel's) into ``(model with QuantLinear
    layers, tokenizer)``.

    ``dtype`` casts the non-quantized floating tensors (default: as stored); scales stay as stored
    (fp16 or bf16). ``model.checkpoint_info`` says what was found: format, group size, scales dtype.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    config = _read_config(path)
    qc = config.get("quantization_config")
    group_size = check_quantization_config(qc)
    fmt = checkpoint_format(qc)
    tensors = _read_tensors(path)
    names = sorted({k.rpartition(".")[0] for k in tensors if k.rpartition(".")[2] in QUANT_TENSORS})
    if not names:
        raise CheckpointError(f"{path} has no quantized layers (no *.qweight / *.qzeros / *.scales tensors)")

    model = _empty_model(path, dtype)
    for name in names:
        _set_module(model, name, _quant_linear(model, name, tensors, fmt, group_size, dtype))
    _load_plain(model, tensors, dtype)
    _tie_head(model)
    _check_nothing_missing(model)
    model.config.quantization_config = qc
    model.checkpoint_info = {"format": fmt, "group_size": group_size,
                             "scales_dtype": dtype_name(_scales_dtype(model, names)), "layers": len(names)}

    tokenizer = AutoTokenizer.from_pretrained(path)
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer
