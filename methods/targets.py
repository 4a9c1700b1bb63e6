"""Which Linear layers a method quantizes, and the checks that apply to all of them."""
from __future__ import annotations

import torch
from torch import nn

from methods import onload
from methods.quantizer import QuantSpec, QuantSpecError, valid_group_sizes


def target_linears(model: nn.Module, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    """All Linear layers of the model, in module order; the output head only when asked."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (include_lm_head or mod is not head):
            out[name] = mod
    return out


def check_group_size(linears: dict[str, nn.Linear], spec: QuantSpec) -> None:
    bad = {name: m.in_features for name, m in linears.items() if spec.group_size > 0 and m.in_features % spec.group_size}
    if bad:
        name, width = next(iter(bad.items()))
        sizes = valid_group_sizes({m.in_features for m in linears.values()})
        raise QuantSpecError(
            f"group_size={spec.group_size} does not divide in_features={width} of {name}"
            f"{f' (and {len(bad) - 1} more layers)' if len(bad) > 1 else ''}; "
            f"group sizes that divide every layer: {', '.join(map(str, sizes))}"
        )


def spec_from(cfg) -> QuantSpec:
    """The quantization spec of a method config (bits, group_size, symmetric)."""
    return QuantSpec(bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric)


def prepare_targets(model: nn.Module, cfg) -> tuple[QuantSpec, dict[str, nn.Linear]]:
    """What every method does first: the spec from a method config and the Linears it quantizes
    (the output head untied from the embeddings when it is one of them), group size checked."""
    spec = spec_from(cfg)
    if cfg.quantize_lm_head:
        untie_head(model)
    targets = target_linears(model, include_lm_head=cfg.quantize_lm_head)
    check_group_size(targets, spec)
    return spec, targets


def untie_head(model: nn.Module) -> None:
    """Give the output head its own weight so quantizing it leaves the input embeddings alone."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if head is not None and emb is not None and head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        if hasattr(model.config, "tie_word_embeddings"):
            model.config.tie_word_embeddings = False


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def fake_quantize_linears(linears: dict[str, nn.Linear], spec: QuantSpec, progress=None, clips=None):
    """Quantize each Linear in place; returns (per-layer stats, {name: QuantizedWeight})."""
    from methods.quantizer import QuantizedWeight

    stats, qweights = [], {}
    for name, lin in onload.walk(linears.items()):
        w = lin.weight.data
        qw = QuantizedWeight.from_weight(w, spec, None if clips is None else clips.get(name))
        wq = qw.dequantize().to(w.dtype)
        stats.append({"layer": name, "weight_mse": (wq.float() - w.float()).pow(2).mean().item()})
        lin.weight.data.copy_(wq)
        if onload.keeps_codes(lin):
            qweights[name] = qw
        if progress is not None:
            progress.update(1)
    return stats, qweights
