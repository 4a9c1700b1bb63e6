"""``QuantLinear``: an ``nn.Linear`` replacement holding AWQ-GEMM packed 4-bit weights.

On CUDA with fp16/bf16 activations the forward pass runs the Triton W4A16 kernel; everywhere else
it dequantizes exactly (``(q - zero) * scale`` via methods/quantizer.py), rounds the weight to the
activation dtype and calls ``F.linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.pack import PACK, AWQTensors, pack_awq, unpack_awq
from methods.quantizer import QuantizedWeight

_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


class QuantLinear(nn.Module):
    """``y = x @ dequant(W).T + b`` with ``qweight [in, out/8]``, ``qzeros [in/g, out/8]``, ``scales [in/g, out]``."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool = False,
                 device=None, dtype=torch.float32):
        super().__init__()
        if in_features % group_size or out_features % PACK:
            raise ValueError(f"QuantLinear({in_features}, {out_features}): group_size={group_size} must divide "
                             f"in_features and out_features must be a multiple of {PACK}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(in_features, out_features // PACK, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(n_groups, out_features // PACK, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(n_groups, out_features, dtype=torch.float16, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_packed(cls, packed: AWQTensors, group_size: int, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Wrap already packed tensors (no copy)."""
        in_features, out_features = packed.qweight.shape[0], packed.scales.shape[1]
        layer = cls(in_features, out_features, group_size, bias is not None, device="meta")
        layer.qweight, layer.qzeros, layer.scales = packed.qweight, packed.qzeros, packed.scales
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, qweight: QuantizedWeight) -> "QuantLinear":
        """Pack ``qweight`` (the integer form of ``linear.weight``) and keep ``linear``'s bias."""
        if tuple(qweight.codes.shape) != (linear.out_features, linear.in_features):
            raise ValueError(f"QuantizedWeight codes {tuple(qweight.codes.shape)} do not match the Linear's weight "
                             f"[{linear.out_features}, {linear.in_features}]")
        packed = AWQTensors(*(t.to(linear.weight.device) for t in pack_awq(qweight)))
        group_size = qweight.spec.group_len(linear.in_features)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_packed(packed, group_size, bias)

    def quantized_weight(self) -> QuantizedWeight:
        return unpack_awq(self.qweight, self.qzeros, self.scales, self.group_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``[out, in]`` weight this layer multiplies by, in ``dtype``."""
        return self.quantized_weight().dequantize().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype in _KERNEL_DTYPES:
            from kernels.w4a16 import w4a16_matmul  # imports Triton only when a GPU path is taken

            y = w4a16_matmul(x.reshape(-1, self.in_features), self.qweight, self.qzeros, self.scales, self.group_size)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), bias)

    def _apply(self, fn, recurse=True):
        # model.half()/.to(dtype) must not touch the fp16 scales (a bf16 round trip would lose bits):
        # they follow device moves only.
        scales = self._buffers.pop("scales")
        try:
            super()._apply(fn, recurse)
        finally:
            target = fn(torch.empty(0, dtype=torch.float16, device=scales.device)).device
            self._buffers["scales"] = scales.to(target)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def _tie_off_head(model: nn.Module, names) -> None:
    """A quantized output head can no longer share the input embedding's weight."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not any(model.get_submodule(n) is head for n in names):
        return
    for model_config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if getattr(model_config, "tie_word_embeddings", False):  # a transformers config, not one of ours
            model_config.tie_word_embeddings = False


def replace_linears(model: nn.Module, qweights: dict[str, QuantizedWeight]) -> nn.Module:
    """Swap each named ``nn.Linear`` for a ``QuantLinear`` built from its ``QuantizedWeight`` (in place)."""
    linears = {}
    for name in qweights:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"replace_linears: the model has no module named {name!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"replace_linears: {name!r} is a {type(module).__name__}, not an nn.Linear")
        linears[name] = module
    if hasattr(model, "config"):
        _tie_off_head(model, linears)
    for name, module in linears.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(module, qweights[name]))
    return model


@torch.no_grad()
def dequantize_linears(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Swap every ``QuantLinear`` for an ``nn.Linear`` holding its dequantized weight in ``dtype`` (in
    place): for activations in ``dtype`` on a CPU, the same numbers as the ``QuantLinear`` (its CPU
    forward multiplies by exactly this weight) without unpacking the int4 codes on every call."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]:
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        linear.weight = nn.Parameter(module.dequantize(dtype), requires_grad=False)
        if module.bias is not None:
            linear.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return model
