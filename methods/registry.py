"""The method registry: each method registers its class together with its config dataclass.

The config dataclass is the single source of a method's defaults; the harness derives its Hydra
schema nodes, the command line's valid choices and the one "unknown method" error from here.
An ablation is a registration of the same class with other config defaults, not a subclass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


class MethodError(ValueError):
    """A method cannot run as configured (the harness prints it as one line)."""


class UnknownMethodError(MethodError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want the plain sentence
        return self.args[0]


def choice(default: str, *others: str):
    """A config field that takes one of a few named values (checked before the model loads)."""
    return field(default=default, metadata={"choices": (default, *others)})


def check_choices(cfg) -> None:
    """MethodError naming the valid values when a choice field holds anything else."""
    for f in dataclasses.fields(entry(cfg.name).config_type):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            raise MethodError(f"method.{f.name}={getattr(cfg, f.name)!r} is not valid for method={cfg.name}; "
                              f"choose one of: {', '.join(allowed)}")


@dataclass
class MethodConfig:
    """What every method shares: the weight format. RTN and FP use it as is."""
    name: str = "rtn"
    bits: int = 4
    group_size: int = 64  # -1 = per output channel
    symmetric: bool = False
    quantize_lm_head: bool = False


@dataclass
class QuantResult:
    method: str
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    layers: list[dict[str, Any]] = field(default_factory=list)  # per-layer evidence (α, loss vs RTN, error)
    # integer codes + group params per quantized Linear (module name -> methods.quantizer.QuantizedWeight):
    # what kernels/export.py packs. The model itself holds the dequantized (fake-quant) weights.
    qweights: dict[str, Any] = field(default_factory=dict)
    # result rows the method measured itself (suite, task, metric, value, stderr, n), next to the suites'
    rows: list[dict[str, Any]] = field(default_factory=list)


class Method:
    """Base of every method class: ``quantize`` modifies the model in place."""
    name: str = ""
    # works on a model whose decoder layers are offloaded (methods/onload.py): it holds each layer
    # while it changes it; the peers' own code expects every weight in place
    offloadable: bool = True

    def check_installed(self) -> None:
        """Raise MethodError when an optional package the method needs is missing (cheap, no import)."""

    def check_config(self, cfg) -> None:
        """Raise MethodError for settings this method cannot run with (checked before the model loads)."""

    def export_problem(self, cfg) -> str | None:
        """Why weights quantized with ``cfg`` cannot be written as a packed checkpoint (None: they can)."""
        return None

    def quantize(self, model: torch.nn.Module, calib: Any, cfg: Any) -> QuantResult:
        raise NotImplementedError


@dataclass(frozen=True)
class Entry:
    name: str
    method: Method
    config_type: type
    defaults: dict = field(default_factory=dict)  # config fields this registration sets differently
    calibrated: bool = True  # reads calibration windows: the session draws them only for such methods
    reference: bool = False  # leaves the weights as they are: its rows are the FP reference

    def default_config(self):
        """The config instance with this registration's defaults (Hydra's schema node)."""
        return self.config_type(name=self.name, **self.defaults)

    def fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.config_type)}


_REGISTRY: dict[str, Entry] = {}


def register(name: str, config_type: type = MethodConfig, *, calibrated: bool = True, reference: bool = False,
             **defaults) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        obj = cls()
        obj.name = name
        _REGISTRY[name] = Entry(name, obj, config_type, defaults, calibrated, reference)
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def entry(name: str) -> Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(available())}") from None


def get(name: str) -> Method:
    return entry(name).method


def unregister(name: str) -> None:
    """Drop a registration (tests that add a throwaway method clean up with this)."""
    _REGISTRY.pop(name, None)
