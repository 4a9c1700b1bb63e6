"""Per-architecture structure as data: where the decoder layers are, which Linears share an input,
and which preceding op each group of Linears can fold an input-channel scale into.

Adding an architecture is adding an entry to ``MAPPINGS`` (keyed by ``config.model_type``).
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.quantizer import QuantSpecError


class UnsupportedArchitecture(QuantSpecError):
    pass


@dataclass(frozen=True)
class ScaleGroup:
    prev: str  # module (relative to the layer) whose output feeds ``linears``: a norm or a Linear
    linears: tuple[str, ...]
    # the module whose output AWQ's block loss compares (attention, MLP); None: the Linears' own
    # outputs, where the linear proxy is already exact
    block: str | None = None


@dataclass(frozen=True)
class ArchMapping:
    layers: str  # attribute path of the decoder layers' ModuleList
    input_sets: tuple[tuple[str, ...], ...]  # Linears that read the same input tensor
    scale_groups: tuple[ScaleGroup, ...]
    norm_plus_one: bool = False  # Gemma's RMSNorm computes x̂·(1 + weight)
    attention_logits: tuple[str, ...] = ("q_proj", "k_proj")  # Linears whose outputs form the attention logits

    def input_set_of(self, linear: str) -> tuple[str, ...]:
        for s in self.input_sets:
            if linear in s:
                return s
        return (linear,)


_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
_INPUT_SETS = (_ATTN, ("self_attn.o_proj",), _GATE_UP, ("mlp.down_proj",))

LLAMA_LIKE = ArchMapping(
    layers="model.layers",
    input_sets=_INPUT_SETS,
    scale_groups=(
        ScaleGroup("input_layernorm", _ATTN, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",)),
        ScaleGroup("post_attention_layernorm", _GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",)),
    ),
)

# Gemma 3: the MLP reads pre_feedforward_layernorm (post_attention_layernorm normalizes the
# attention output before the residual add, so it cannot absorb the MLP's input scale).
GEMMA3 = ArchMapping(
    layers="model.layers",
    input_sets=_INPUT_SETS,
    scale_groups=(
        ScaleGroup("input_layernorm", _ATTN, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",)),
        ScaleGroup("pre_feedforward_layernorm", _GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",)),
    ),
    norm_plus_one=True,
)

# Qwen3's q_norm/k_norm act on q/k outputs, which input scaling leaves unchanged: same groups as Llama.
MAPPINGS = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
    "gemma3_text": GEMMA3,
}


def mapping_for(model) -> ArchMapping:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MAPPINGS:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} has no layer mapping; supported: {', '.join(sorted(MAPPINGS))} "
            f"(add an entry to methods/mappings.py)"
        )
    return MAPPINGS[model_type]
