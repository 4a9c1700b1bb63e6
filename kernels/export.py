"""Write and read AWQ-GEMM checkpoints (the layout AutoAWQ, transformers and vLLM load).

A checkpoint directory holds
    model.safetensors  ``<module>.qweight/.qzeros/.scales`` (+ ``.bias``) for every quantized Linear
                       and every other parameter/buffer under its usual name; a tied output head
                       is stored once, as the input embedding
    config.json        the model config with ``quantization_config`` = :func:`awq_quantization_config`
    tokenizer files    whatever ``tokenizer.save_pretrained`` writes
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kernels.pack import PACK, AWQTensors
from kernels.qlinear import QuantLinear, replace_linears
from methods.quantizer import QuantizedWeight

WEIGHTS_NAME = "model.safetensors"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
QUANT_TENSORS = ("qweight", "qzeros", "scales")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed at init; older checkpoints still carry it


class CheckpointError(ValueError):
    """A checkpoint directory that is not a well-formed 4-bit AWQ-GEMM checkpoint."""


def awq_quantization_config(group_size: int) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}


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
            raise ValueError(f"export_checkpoint: {name} is {qw.spec.bits}-bit; AWQ-GEMM checkpoints are 4-bit only")
        if qw.spec.group_len(in_features) != group_size:
            raise ValueError(f"export_checkpoint: {name} was quantized with group size "
                             f"{qw.spec.group_len(in_features)}, not group_size={group_size}")


def export_checkpoint(model: nn.Module, tokenizer, qweights: dict[str, QuantizedWeight], group_size: int,
                      out_dir) -> Path:
    """Replace the quantized Linears of ``model`` by ``QuantLinear`` (in place) and write the checkpoint."""
    from safetensors.torch import save_file

    _check_qweights(qweights, group_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    replace_linears(model, qweights)
    save_file(_tensors_to_save(model), str(out / WEIGHTS_NAME), metadata={"format": "pt"})

    config = model.config.to_dict()
    config.pop("quantization_config", None)  # e.g. the "gguf" one of a model read from a GGUF file
    config["quantization_config"] = awq_quantization_config(group_size)
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------------
# load


def check_quantization_config(qc) -> int:
    """Validate an AWQ-GEMM ``quantization_config``; returns its group size."""
    want = "expected " + json.dumps(awq_quantization_config("<g>"))
    if not isinstance(qc, dict):
        raise CheckpointError(f"config.json has no quantization_config dict ({want})")
    if str(qc.get("quant_method", "")).lower() != "awq":
        raise CheckpointError(f"quantization_config.quant_method={qc.get('quant_method')!r} is not supported; {want}")
    if qc.get("bits") != 4:
        raise CheckpointError(f"quantization_config.bits={qc.get('bits')!r} is not supported; only 4-bit AWQ")
    if str(qc.get("version", "")).lower() != "gemm":
        raise CheckpointError(f"quantization_config.version={qc.get('version')!r} is not supported; only 'gemm' "
                              "(GEMV/Marlin/exllama layouts pack differently)")
    if qc.get("zero_point") is not True:
        raise CheckpointError(f"quantization_config.zero_point={qc.get('zero_point')!r}; only zero_point=true is supported")
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


def _expect(name: str, t: torch.Tensor | None, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    if t is None:
        raise CheckpointError(f"missing tensor {name}")
    if tuple(t.shape) != shape:
        raise CheckpointError(f"tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
    if t.dtype != dtype:
        raise CheckpointError(f"tensor {name} has dtype {t.dtype}, expected {dtype}")
    return t


def _quant_linear(model: nn.Module, name: str, tensors: dict, group_size: int, dtype) -> QuantLinear:
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
    shapes = {"qweight": ((k, n // PACK), torch.int32), "qzeros": ((k // group_size, n // PACK), torch.int32),
              "scales": ((k // group_size, n), torch.float16)}
    packed = AWQTensors(*(_expect(f"{name}.{part}", tensors.pop(f"{name}.{part}", None), *shapes[part])
                          for part in QUANT_TENSORS))
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


def load_checkpoint(path, dtype: torch.dtype | None = None, device="cpu"):
    """Read an AWQ-GEMM checkpoint (ours or AutoAWQ's) into ``(model with QuantLinear layers, tokenizer)``.

    ``dtype`` casts the non-quantized floating tensors (default: as stored); scales stay fp16.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    config = _read_config(path)
    group_size = check_quantization_config(config.get("quantization_config"))
    tensors = _read_tensors(path)
    names = sorted({k.rpartition(".")[0] for k in tensors if k.rpartition(".")[2] in QUANT_TENSORS})
    if not names:
        raise CheckpointError(f"{path} has no quantized layers (no *.qweight / *.qzeros / *.scales tensors)")

    model = _empty_model(path, dtype)
    for name in names:
        _set_module(model, name, _quant_linear(model, name, tensors, group_size, dtype))
    _load_plain(model, tensors, dtype)
    _tie_head(model)
    _check_nothing_missing(model)
    model.config.quantization_config = config["quantization_config"]

    tokenizer = AutoTokenizer.from_pretrained(path)
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer
