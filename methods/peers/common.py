"""What every peer adapter shares: the install check and writing a peer's result into our model."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from methods.quantizer import QuantizedWeight, QuantSpec, quantize
from methods.registry import MethodConfig, MethodError

EXTRA = "quant-harness[peers]"


@dataclass
class PeerAWQConfig(MethodConfig):
    """AWQ of llm-compressor / GPTQModel; the peers' GPTQ uses methods.gptq.GPTQConfig."""
    name: str = "llmc_awq"
    n_grid: int = 20  # llm-compressor's scale grid (GPTQModel uses its own)
    duo_scaling: bool = True  # llm-compressor's default
    batch_size: int = 8


def require(module: str, package: str, method: str) -> None:
    """One line naming the install when an optional peer package is missing (cheap: no import)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        found = False
    if not found:
        raise MethodError(f"method={method} needs the {package!r} package: pip install '{EXTRA}' (or pip install '{package}')")


def head_name(model: nn.Module) -> str | None:
    head = model.get_output_embeddings()
    return next((n for n, m in model.named_modules() if m is head), None)


def from_peer_params(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Codes of ``w`` on the peer's own grid (scale, integer zero point in our [0, 2^bits - 1] range)."""
    scale, zero = scale.float(), zero.float()
    return QuantizedWeight(quantize(w.float(), scale, zero, spec), scale, zero, spec)


@torch.no_grad()
def adopt(model: nn.Module, peer_state: dict[str, torch.Tensor], qweights: dict[str, QuantizedWeight]) -> None:
    """Copy every tensor our model has from the peer's state (their smoothing moves norm and Linear
    weights), then set each quantized Linear to its dequantized codes, in our model's dtype."""
    for name, t in model.state_dict().items():
        if name in peer_state:
            t.copy_(peer_state[name].to(t.dtype))
    for name, qw in qweights.items():
        lin = model.get_submodule(name)
        lin.weight.copy_(qw.dequantize().to(lin.weight.dtype))


def calib_tokenizer(calib, method: str):
    tok = calib.tokenizer
    if tok is None:  # the windows are already tokens, but the tools insist on a tokenizer
        raise ValueError(f"{method} needs the calibration set's tokenizer (harness.calib.load attaches it)")
    return tok
