"""Which serving runtime can load which quantized checkpoint: a small table of constraints, as data.

A variant is *loadable* by a runtime when a checkpoint format that this harness writes
(:data:`EXPORTED_FORMATS`) fits that runtime's kernel for the format (:data:`RUNTIME_FORMATS`):
bits, group size and, where the kernel cares, symmetry. FP loads everywhere (plain safetensors).
Formats the harness does not write are listed too, so the report can say what would load elsewhere.

Sources (read from the projects' code; re-check when upgrading a runtime):
- vLLM ``vllm/model_executor/layers/quantization/awq.py``: ``AWQConfig`` raises unless
  ``weight_bits == 4``; ``.../quantization/utils/marlin_utils.py``: ``MARLIN_SUPPORTED_GROUP_SIZES
  = [-1, 32, 64, 128]`` (the awq_marlin / gptq_marlin kernels); ``.../quantization/gptq.py``:
  ``GPTQConfig`` accepts 2, 3, 4 and 8 bits (the exllama-style kernel, any group size).
- transformers 5.x ``transformers/utils/quantization_config.py``: ``GPTQConfig.post_init`` accepts
  2, 3, 4 and 8 bits; AWQ checkpoints run through GPTQModel, whose
  ``gptqmodel/nn_modules/qlinear/awq_torch.py`` declares ``SUPPORTS_BITS = [4]`` and
  ``SUPPORTS_GROUP_SIZE = [-1, 16, 32, 64, 128]``, symmetric or not. DESIGN.md records an exported
  checkpoint loading in transformers 5.24 through that kernel.
- This harness: ``kernels/export.py`` writes AWQ-GEMM only, 4-bit, with zero points
  (``awq_quantization_config``); symmetric codes are written with their fixed zero point.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError
from methods.fp import FP

ANY = "any"
RUNTIMES = ("vllm", "transformers")
CHOICES = (ANY,) + RUNTIMES


@dataclass(frozen=True)
class FormatRule:
    """What one kernel path accepts. ``group_sizes`` None: any; ``symmetric`` None: either."""
    fmt: str
    bits: tuple[int, ...]
    group_sizes: tuple[int, ...] | None = None
    symmetric: bool | None = None

    def accepts(self, bits: int, group_size: int, symmetric: bool) -> bool:
        return (bits in self.bits and (self.group_sizes is None or group_size in self.group_sizes)
                and (self.symmetric is None or self.symmetric == symmetric))


EXPORTED_FORMATS = (FormatRule("awq-gemm", bits=(4,)),)

RUNTIME_FORMATS: dict[str, tuple[FormatRule, ...]] = {
    "vllm": (FormatRule("awq-gemm", bits=(4,), group_sizes=(-1, 32, 64, 128)),
             FormatRule("gptq", bits=(2, 3, 4, 8))),
    "transformers": (FormatRule("awq-gemm", bits=(4,), group_sizes=(-1, 16, 32, 64, 128)),
                     FormatRule("gptq", bits=(2, 3, 4, 8))),
}


def _exported(fmt: str, bits: int, group_size: int, symmetric: bool) -> bool:
    return any(r.fmt == fmt and r.accepts(bits, group_size, symmetric) for r in EXPORTED_FORMATS)


def loadable(method: str, bits: int, group_size: int, symmetric: bool) -> dict[str, str | None]:
    """Per runtime: the exported format it loads this variant as, or None."""
    if method == FP:
        return {rt: "fp16 safetensors" for rt in RUNTIMES}
    out = {}
    for rt, rules in RUNTIME_FORMATS.items():
        fits = [r.fmt for r in rules if r.accepts(bits, group_size, symmetric)
                and _exported(r.fmt, bits, group_size, symmetric)]
        out[rt] = fits[0] if fits else None
    return out


def why_not(method: str, bits: int, group_size: int, symmetric: bool, runtime: str) -> str:
    """Why ``runtime`` cannot load the variant as this harness exports it ("" when it can)."""
    if loadable(method, bits, group_size, symmetric)[runtime]:
        return ""
    elsewhere = [r.fmt for r in RUNTIME_FORMATS[runtime] if r.accepts(bits, group_size, symmetric)]
    if elsewhere:
        return (f"{runtime} would load w{bits} g{group_size} as {elsewhere[0]}, which this harness does "
                f"not export (it writes {', '.join(sorted({r.fmt for r in EXPORTED_FORMATS}))} at "
                f"{'/'.join(str(b) for r in EXPORTED_FORMATS for b in r.bits)} bits)")
    return f"no {runtime} kernel takes w{bits} g{group_size}{' symmetric' if symmetric else ''}"


def check_choice(runtime: str) -> str:
    if runtime not in CHOICES:
        raise HarnessError(f"unknown runtime {runtime!r}; choose one of: {', '.join(CHOICES)}")
    return runtime
