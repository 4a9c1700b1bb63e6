"""llm-compressor (vLLM project) AWQ and GPTQ as peers: ``method=llmc_awq`` / ``method=llmc_gptq``.

The tool runs on a copy of our model with our calibration windows; its smoothed weights and its
per-group scales and zero points then come back into our model, so our suites evaluate it.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
import time

import torch

from methods.gptq import GPTQConfig
from methods.peers.common import PeerAWQConfig, adopt, calib_tokenizer, from_peer_params, head_name, require
from methods.quantizer import QuantSpec
from methods.registry import Method, MethodError, QuantResult, register
from methods.targets import peak_rss_mb, prepare_targets

PACKAGE = "llmcompressor>=0.14"


def weight_args(spec: QuantSpec) -> dict:
    per_channel = spec.group_size <= 0
    return {"num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric,
            "strategy": "channel" if per_channel else "group", "group_size": None if per_channel else spec.group_size}


@contextlib.contextmanager
def _no_pinned_memory():
    """llm-compressor 0.14 pins cached activations for GPU transfers; on a CPU-only torch that crashes."""
    if torch.cuda.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *a, **k: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def _their_qweights(peer, names, spec: QuantSpec) -> dict:
    """Their signed zero points (``q ∈ [-2^(b-1), 2^(b-1) - 1]``) shifted into our unsigned code range."""
    shift = 2 ** (spec.bits - 1)
    out = {}
    for name in names:
        mod = peer.get_submodule(name)
        zp = getattr(mod, "weight_zero_point", None)
        zero = torch.full_like(mod.weight_scale, float(shift)) if zp is None else zp.float() + shift
        out[name] = from_peer_params(mod.weight.data, mod.weight_scale.data, zero, spec)
    return out


class _LLMCompressor(Method):
    offloadable = False  # the peer's own code needs every weight in place

    def check_installed(self) -> None:
        require("llmcompressor", PACKAGE, self.name)

    def recipe(self, cfg, quant: dict, ignore: list[str]):
        raise NotImplementedError

    def quantize(self, model, calib, cfg) -> QuantResult:
        self.check_installed()
        if calib is None:
            raise ValueError(f"{self.name} needs calibration data")
        from datasets import Dataset
        from llmcompressor import oneshot

        t0 = time.perf_counter()
        spec, targets = prepare_targets(model, cfg)
        ignore = [] if cfg.quantize_lm_head or head_name(model) is None else [head_name(model)]
        quant = {"group_0": {"targets": ["Linear"], "weights": weight_args(spec)}}
        ids = calib.input_ids
        data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        peer = copy.deepcopy(model)
        with tempfile.TemporaryDirectory(prefix="llmc-") as tmp, _no_pinned_memory():
            # it re-reads the config from name_or_path (a GGUF package dir or "" for our models)
            peer.config.save_pretrained(tmp)
            peer.config._name_or_path = tmp
            oneshot(model=peer, tokenizer=calib_tokenizer(calib, self.name), dataset=data,
                    recipe=self.recipe(cfg, quant, ignore), num_calibration_samples=len(ids),
                    max_seq_length=ids.shape[1], shuffle_calibration_samples=False, batch_size=cfg.batch_size)
        qweights = _their_qweights(peer, targets, spec)
        adopt(model, peer.state_dict(), qweights)
        del peer
        return QuantResult(self.name, time.perf_counter() - t0, peak_rss_mb(), [], qweights)


@register("llmc_awq", PeerAWQConfig)
class LLMCompressorAWQ(_LLMCompressor):
    def recipe(self, cfg, quant, ignore):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(duo_scaling=cfg.duo_scaling, n_grid=cfg.n_grid),
                QuantizationModifier(config_groups=quant, ignore=ignore)]


@register("llmc_gptq", GPTQConfig)
class LLMCompressorGPTQ(_LLMCompressor):
    def recipe(self, cfg, quant, ignore):
        from llmcompressor.modifiers.gptq import GPTQModifier

        if cfg.act_order == "group":  # their actorder="group" is a g_idx order, not group-aware reordering
            raise MethodError(f"{self.name} has no group-aware reordering; use method.act_order=static or off")
        return [GPTQModifier(config_groups=quant, ignore=ignore, block_size=cfg.block_size,
                             dampening_frac=cfg.damp_percent, actorder="static" if cfg.act_order == "static" else None)]
