"""Offloaded decoder layers: each layer's weights live off the compute device (in host memory or in
safetensors files) and are materialised on it only while that layer is used.

A released layer's parameters are meta tensors of the right shape and dtype, so the model's module
tree, its parameter count and ``model.to(dtype)`` keep working; a materialised layer gets its
tensors from its *home* in the dtype its meta parameters carry (master weights while a method runs,
the compute dtype while the suites run). Forward passes hold the layer for the call; a method holds
it with ``write=True`` for all of its work on that layer, and the layer's weights go back to the home
when it is released. ``reset`` puts every home back to the weights the model was loaded with.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

OWNER = "_qh_offloaded_layer"  # set on every module of an offloaded layer
LAYERS = "_qh_offloaded_layers"  # set on the model: its OffloadedLayer objects, in order


class HostHome:
    """Weights in host memory. The loaded tensors stay untouched; a written layer gets new ones."""
    shared = True  # read() hands out the home's own tensors: callers must copy before changing them

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.pristine = self.current = tensors

    def names(self) -> set[str]:
        return set(self.pristine)

    def read(self) -> dict[str, torch.Tensor]:
        return self.current

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        self.current = tensors

    def reset(self) -> None:
        self.current = self.pristine


class DiskHome:
    """Weights in safetensors files: the checkpoint's own tensors until the layer is written, then a
    scratch file of its own (written whole, then renamed)."""
    shared = False

    def __init__(self, sources: dict[str, tuple[str, str]], scratch: Path | None):
        self.sources = sources  # name in the layer -> (file, key in that file)
        self.scratch = scratch
        self.written = False

    def names(self) -> set[str]:
        return set(self.sources)

    def read(self) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        if self.written:
            return load_file(str(self.scratch))
        by_file: dict[str, list[tuple[str, str]]] = {}
        for name, (file, key) in self.sources.items():
            by_file.setdefault(file, []).append((name, key))
        out = {}
        for file, names in by_file.items():
            with safe_open(file, framework="pt") as f:
                out.update({name: f.get_tensor(key) for name, key in names})
        return out

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tmp = self.scratch.with_name(self.scratch.name + ".partial")
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp))
        os.replace(tmp, self.scratch)
        self.written = True

    def reset(self) -> None:
        if self.scratch is not None:
            self.scratch.unlink(missing_ok=True)
        self.written = False


class OffloadedLayer:
    """One decoder layer whose parameters are materialised on ``device`` only while held."""

    def __init__(self, layer: nn.Module, prefix: str, home, device: torch.device, master_dtype: torch.dtype):
        self.layer, self.prefix, self.home = layer, prefix, home
        self.device, self.master_dtype = torch.device(device), master_dtype
        self.depth, self.dirty = 0, False
        names = set(dict(layer.named_parameters(remove_duplicate=False)))
        if home.names() != names:
            raise ValueError(f"offloaded layer {prefix!r}: its home holds other tensors than the layer's parameters")
        for module in layer.modules():
            object.__setattr__(module, OWNER, self)
        forward = layer.forward

        def held_forward(*args, **kwargs):
            with self.held():
                return forward(*args, **kwargs)

        layer.forward = held_forward
        self._release()

    @contextlib.contextmanager
    def held(self, write: bool = False) -> Iterator[nn.Module]:
        """The layer with its weights on the device; ``write``: what is changed is kept on release."""
        if self.depth == 0:
            self._materialise()
        self.depth += 1
        self.dirty |= write
        try:
            yield self.layer
        finally:
            self.depth -= 1
            if self.depth == 0:
                self._release()

    def _params(self) -> Iterator[tuple[str, nn.Module, str]]:
        for name, _ in self.layer.named_parameters(remove_duplicate=False):
            owner, _, attr = name.rpartition(".")
            yield name, self.layer.get_submodule(owner), attr

    def _materialise(self) -> None:
        tensors = self.home.read()
        for name, module, attr in self._params():
            dtype = module._parameters[attr].dtype  # what model.to(dtype) last asked for
            t = tensors[name].to(self.device, dtype, copy=self.home.shared)
            module._parameters[attr] = nn.Parameter(t, requires_grad=False)

    def _release(self) -> None:
        if self.dirty:
            self.home.write({name: module._parameters[attr].detach().to("cpu", self.master_dtype)
                             for name, module, attr in self._params()})
            self.dirty = False
        for _, module, attr in self._params():
            p = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)


RESIDENT = "_qh_resident_home"  # set on the model: the loaded values of the tensors outside the layers


def offload(model: nn.Module, layers: list[tuple[str, nn.Module, object]], device, master_dtype, resident) -> None:
    """Offload each ``(prefix, layer, home)``; the layers' parameters become meta tensors. ``resident``
    is a home with the loaded values of the other tensors (by state_dict name), for ``reset``."""
    setattr(model, LAYERS, [OffloadedLayer(layer, prefix, home, device, master_dtype)
                            for prefix, layer, home in layers])
    setattr(model, RESIDENT, resident)


@torch.no_grad()
def move_resident(model: nn.Module, device) -> None:
    """``model.to(device)`` for the tensors that are not offloaded (tied parameters stay tied)."""
    moved: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and not p.is_meta:
                if id(p) not in moved:
                    moved[id(p)] = nn.Parameter(p.to(device), requires_grad=p.requires_grad)
                module._parameters[name] = moved[id(p)]
        for name, b in module._buffers.items():
            if b is not None and not b.is_meta:
                module._buffers[name] = b.to(device)


def offloaded(model: nn.Module) -> list[OffloadedLayer]:
    return getattr(model, LAYERS, [])


def held(module: nn.Module, write: bool = True):
    """Hold the offloaded layer ``module`` belongs to (a no-op context for a model that is not offloaded)."""
    owner = getattr(module, OWNER, None)
    return contextlib.nullcontext(module) if owner is None else owner.held(write)


def keeps_codes(module: nn.Module) -> bool:
    """Whether a method should keep the integer codes of this Linear: not inside an offloaded layer,
    where they would hold a byte per weight in memory for the export that offloading refuses."""
    return getattr(module, OWNER, None) is None


def walk(named: Iterable[tuple[str, nn.Module]], write: bool = True) -> Iterator[tuple[str, nn.Module]]:
    """``named`` modules in order, each yielded while its offloaded layer is held; consecutive
    modules of one layer share one hold, so a layer is materialised once per run of its modules."""
    return _holding(((name, module, getattr(module, OWNER, None)) for name, module in named), write)


def _holding(items, write: bool):
    """Yield ``(name, value)`` of ``(name, value, owner)`` items with ``owner`` held (None: nothing to hold)."""
    current, stack = None, contextlib.ExitStack()
    try:
        for name, value, owner in items:
            if owner is not current:
                stack.close()
                stack, current = contextlib.ExitStack(), owner
                if owner is not None:
                    stack.enter_context(owner.held(write))
            yield name, value
    finally:
        stack.close()


@torch.no_grad()
def reset(model: nn.Module) -> None:
    """An offloaded model back to the weights it was loaded with: every layer's home, and the
    resident tensors copied in place (tied tensors stay tied)."""
    for layer in offloaded(model):
        if layer.depth:
            raise RuntimeError(f"offloaded layer {layer.prefix!r} is still held")
        layer.home.reset()
    resident = getattr(model, RESIDENT, None)
    if resident is not None:
        state = model.state_dict(keep_vars=True)
        for name, value in resident.read().items():
            state[name].copy_(value)


def state_items(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict().items()`` with real tensors: offloaded layers materialised one at a time."""
    layers = offloaded(model)

    def items():
        for key, value in model.state_dict().items():
            owner = next((layer for layer in layers if key.startswith(layer.prefix)), None) if value.is_meta else None
            yield key, (key, value), owner

    for key, (_, value) in _holding(items(), write=False):
        if value.is_meta:  # the layer is held now: read its materialised parameter
            owner = next(layer for layer in layers if key.startswith(layer.prefix))
            value = owner.layer.get_parameter(key[len(owner.prefix):])
        yield key, value.detach()
