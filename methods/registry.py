"""A tiny name-keyed registry of quantization methods."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want the plain sentence
        return self.args[0]


@dataclass
class QuantResult:
    method: str
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    layers: list[dict[str, Any]] = field(default_factory=list)  # per-layer stats (scales, clip, error)
    # integer codes + group params per quantized Linear (module name -> methods.quantizer.QuantizedWeight):
    # what kernels/export.py packs. The model itself holds the dequantized (fake-quant) weights.
    qweights: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    name: str

    def quantize(self, model: torch.nn.Module, calib: Any, cfg: Any) -> QuantResult: ...


_REGISTRY: dict[str, Method] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        obj = cls()
        obj.name = name
        _REGISTRY[name] = obj
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(available())}") from None
