"""``model.offload``: keep the decoder layers off the compute device, one materialised at a time.

- ``cpu``: the model loads into host memory as usual; each decoder layer's weights then stay there
  and go to the compute device only while the layer is used (a model larger than the GPU).
- ``disk``: the weights stay in the checkpoint's safetensors files; the module tree is built without
  weights, the tensors outside the decoder layers (embeddings, final norm, head) are read into
  memory, and each layer is read from disk while it is used. A layer a method changed is written to
  a scratch file under ``model.offload_dir`` (a model larger than host memory).
The mechanism (holding a layer, writing it back) is methods/onload.py.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from harness.errors import HarnessError
from methods import onload

OFFLOADS = ("none", "cpu", "disk")  # model.offload's values, the default first


def check(cfg, plan, export_dir) -> None:
    """One line before loading for settings offloading cannot serve."""
    if cfg.offload not in OFFLOADS:
        raise HarnessError(f"unknown model.offload {cfg.offload!r}; choose one of: {', '.join(OFFLOADS)}")
    if cfg.offload == "none":
        return
    if cfg.device_map:
        raise HarnessError(f"model.offload={cfg.offload} places layers itself; drop model.device_map={cfg.device_map}")
    peers = [v.name for v in plan if not v.entry.method.offloadable]
    if peers:
        raise HarnessError(f"method={peers[0]} runs the peer tool's own code, which needs every weight in memory; "
                           f"use model.offload=none with it")
    if export_dir:
        raise HarnessError(f"export.dir packs every layer's codes at once; it does not run with model.offload={cfg.offload} "
                           "(export with model.offload=none)")


def decoder_layers(model):
    """``(prefix, layer)`` of each decoder layer, from the architecture's mapping."""
    import operator

    from methods.mappings import UnsupportedArchitecture, mapping_for

    try:
        path = mapping_for(model).layers
    except UnsupportedArchitecture as e:
        raise HarnessError(f"model.offload needs to know the decoder layers: {e}") from None
    return [(f"{path}.{i}.", layer) for i, layer in enumerate(operator.attrgetter(path)(model))]


def to_host(model, device: torch.device, master_dtype: torch.dtype) -> None:
    """``offload=cpu`` on a loaded model: its layers' weights become their host-memory homes."""
    layers = [(prefix, layer, onload.HostHome({n: p.detach().to("cpu") for n, p in layer.named_parameters()}))
              for prefix, layer in decoder_layers(model)]
    in_layers = {prefix + n for prefix, layer, _ in layers for n, _ in layer.named_parameters()}
    resident = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in in_layers}
    onload.offload(model, layers, device, master_dtype, onload.HostHome(resident))


def tensor_index(directory: Path) -> dict[str, str]:
    """Tensor name -> safetensors file holding it, over every file of a (possibly sharded) checkpoint."""
    from safetensors import SafetensorError, safe_open

    index = {}
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                index.update({k: str(file) for k in f.keys()})
        except (OSError, SafetensorError) as e:
            raise HarnessError(f"model file {file} is unreadable or truncated ({str(e).splitlines()[0][:160]})") from None
    if not index:
        raise HarnessError(f"model.offload=disk reads safetensors files and {directory} has none; "
                           "use model.offload=cpu for this checkpoint")
    return index


def empty_model(directory: Path, master_dtype: torch.dtype):
    """The model's module tree with its parameters on the meta device (buffers such as rotary tables
    are computed as usual: they are not in the checkpoint)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(directory))
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=master_dtype)


def from_disk(directory: Path, device: torch.device, master_dtype: torch.dtype, scratch_root: Path):
    """``offload=disk``: the model with only its non-layer tensors in memory."""
    index = tensor_index(directory)
    model = empty_model(directory, master_dtype)
    layers = decoder_layers(model)
    in_layers = {prefix + n for prefix, layer in layers for n, _ in layer.named_parameters()}
    resident, resident_sources = {}, {}
    for key, value in model.state_dict().items():
        if key in in_layers:
            continue
        if key in index:
            t = _read(index[key], key)
            resident[key] = t.to(value.dtype) if value.is_floating_point() else t
            resident_sources[key] = (index[key], key)
        elif not _is_tied_head(model, key):
            raise HarnessError(f"model.offload=disk reads tensors by name and {key} is not in {directory}; "
                               "use model.offload=cpu for this checkpoint")
    model.load_state_dict(resident, strict=False, assign=True)
    if _ties_head(model) and _head_key(model) not in resident:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="offload-", dir=scratch_root))
    weakref.finalize(model, shutil.rmtree, scratch, True)  # also runs at interpreter exit
    homes = []
    for i, (prefix, layer) in enumerate(layers):
        sources = {}
        for name, _ in layer.named_parameters():
            if prefix + name not in index:
                raise HarnessError(f"model.offload=disk reads tensors by name and {prefix + name} is not in "
                                   f"{directory}; use model.offload=cpu for this checkpoint")
            sources[name] = (index[prefix + name], prefix + name)
        homes.append((prefix, layer, onload.DiskHome(sources, scratch / f"layer-{i}.safetensors")))
    onload.offload(model, homes, device, master_dtype, onload.DiskHome(resident_sources, None))
    return model


def _read(file: str, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return f.get_tensor(key)


def _head_key(model) -> str | None:
    head = model.get_output_embeddings()
    return next((n + ".weight" for n, m in model.named_modules() if m is head), None) if head is not None else None


def _ties_head(model) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "tie_word_embeddings", False))


def _is_tied_head(model, key: str) -> bool:
    return _ties_head(model) and key == _head_key(model)
