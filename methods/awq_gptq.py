"""AWQ's scaling and its clip search (``clip=false``: without), then GPTQ on the scaled weights, in
one pass over the layers: the combination toolkits chain as two runs (scale first, error
compensation second).

Per decoder layer, fed by the already-quantized layers before it, and with ``true_sequential`` per
input set within it (q/k/v, o_proj, gate/up, down_proj), each fed by the sets quantized before it:
1. collect the input statistics (and the block inputs for ``loss=block``);
2. AWQ's scale search and fold (methods/awq.py); the Gram matrices follow the fold (inputs x / s). A
   scale folded into a Linear that is already quantized (up_proj before down_proj) divides its
   group scales' rows, which keeps its codes;
3. with ``clip``, AWQ's clip search gives each (row, group) a range ratio that GPTQ keeps;
4. GPTQ on each input set's stacked, scaled weights with the Hessian of the scaled inputs;
5. advance the hidden states through the quantized layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.awq import AWQConfig, check_search, clip_ratios, collect_layer, scale_layer
from methods import onload
from methods.capture import layer_linears
from methods.gptq import GPTQConfig, gptq_layer, layer_stages
from methods.layerwise import quantize_layerwise
from methods.quantizer import QuantizedWeight
from methods.registry import Method, MethodError, QuantResult, register


@dataclass
class AWQGPTQConfig(AWQConfig, GPTQConfig):
    name: str = "awq_gptq"
    clip_refine: int = 0  # as in gptq: GPTQ did better on the first clip pass's ranges than on refined ones (README)
    sequential: bool = True  # always: GPTQ's order, each layer fed by the quantized ones before it


@register("awq_gptq", AWQGPTQConfig)
class AWQThenGPTQ(Method):
    def check_config(self, cfg) -> None:
        check_search(cfg)
        if not cfg.sequential:
            raise MethodError("method=awq_gptq always calibrates each layer on the quantized layers before it; "
                              "drop method.sequential=false (or use method=awq)")

    @torch.no_grad()
    def quantize(self, model, calib, cfg) -> QuantResult:
        return quantize_layerwise(self.name, model, calib, cfg, self._layer)

    def _layer(self, runner, i, mapping, spec, cfg, skipped, stats_out, qweights) -> set[str]:
        """Steps 1-5 of the module docstring on decoder layer ``i``; returns its quantized Linears' names."""
        layer = runner.layers[i]
        linears = layer_linears(layer)
        info, gptq_loss, layer_codes = {"layer": f"{mapping.layers}.{i}"}, 0.0, {}
        for stage in layer_stages(linears, mapping, cfg):
            _, stats, block_inputs = collect_layer(runner, i, mapping, cfg, also_advance=False, linears=stage)
            if cfg.scale:
                scales = {}
                info.update(scale_layer(layer, stage, stats, mapping, spec, cfg, skipped, block_inputs, scales))
                for prev, scale in scales.items():
                    if prev in layer_codes:
                        _refold_codes(layer.get_submodule(prev), layer_codes[prev], scale)
            ratios = clip_ratios(stage, stats, mapping, spec, cfg) if cfg.clip else {}
            stage_codes, stage_stats = gptq_layer(stage, stats, spec, cfg, ratios)
            layer_codes.update(stage_codes)
            gptq_loss += sum(s["gptq_loss"] for s in stage_stats)
        qweights.update({f"{mapping.layers}.{i}.{n}": qw for n, qw in layer_codes.items()
                         if onload.keeps_codes(linears[n])})
        info["gptq_loss"] = gptq_loss
        stats_out.append(info)
        runner.advance(i)
        return {f"{mapping.layers}.{i}.{n}" for n in linears}


def _refold_codes(lin: torch.nn.Linear, qw: QuantizedWeight, scale: torch.Tensor) -> None:
    """``fold_scale`` divided the rows of a Linear quantized earlier in the layer by ``scale``: divide
    its group scales' rows instead, and take its weight from them, so that codes and weight agree."""
    qw.scale.div_(scale.view(-1, 1).to(qw.scale.dtype))
    lin.weight.data.copy_(qw.dequantize().to(lin.weight.dtype))
