"""GPTQModel AWQ and GPTQ as peers: ``method=gptqmodel_awq`` / ``method=gptqmodel_gptq``.

GPTQModel loads models from a directory, so our model is saved to a temporary one, quantized there
with our calibration windows, and saved again; we read its packed checkpoint back with our own
unpackers (kernels/pack.py) into our model, so our suites evaluate it. Reading its layers straight
after ``quantize()`` instead gives zero points one step off (7.6), hence the save/reload.
Its CPU AWQ packs correctly only from fp16/bf16 weights, so it gets the session's compute dtype when
that is bf16 or fp16 (as our methods' calibration passes do), fp16 otherwise; and it writes
``./logs``: it runs inside the temporary directory. Its AWQ picks the CUDA-only ``AWQ_GEMM`` kernel by default (7.6:
``BaseQModel.quantize`` with ``backend=AUTO`` and ``format=gemm``), which fails on a CPU with "AWQ: CUDA
is not available"; we ask for its torch kernel (``BACKEND.AWQ_TORCH``, fp16/bf16), which writes the
same AWQ-GEMM layout. The adapter always quantizes on the CPU (``device="cpu"``).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from methods.capture import current_forward_dtype
from methods.gptq import GPTQConfig
from methods.peers.common import PeerAWQConfig, adopt, calib_tokenizer, require
from methods.registry import Method, MethodError, QuantResult, register
from methods.targets import peak_rss_mb, prepare_targets

PACKAGE = "gptqmodel>=7.6"


@contextlib.contextmanager
def _inside(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def _quantization_config(directory: Path) -> dict:
    cfg = json.loads((directory / "config.json").read_text()).get("quantization_config") or {}
    extra = directory / "quantize_config.json"
    return {**(json.loads(extra.read_text()) if extra.is_file() else {}), **cfg}


def unpack_checkpoint(directory: Path, names, awq: bool) -> dict:
    """Our QuantizedWeight for each named Linear of a GPTQModel checkpoint (AWQ-GEMM or GPTQ layout)."""
    from kernels.pack import unpack_awq, unpack_gptq

    tensors = _read_tensors(directory)
    qc = _quantization_config(directory)
    zero_format = "v2" if str(qc.get("checkpoint_format", "gptq")).endswith("v2") else "v1"
    out = {}
    for name in names:
        t = {k: tensors[f"{name}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx") if f"{name}.{k}" in tensors}
        if "qweight" not in t:
            raise MethodError(f"GPTQModel's checkpoint has no packed weight for {name}")
        if awq:
            out[name] = unpack_awq(t["qweight"], t["qzeros"], t["scales"], int(qc["group_size"]))
        else:
            out[name] = unpack_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], zero_format)
    return out


def _save_copy(model, directory: Path, dtype: torch.dtype | None) -> None:
    """Save ``model`` for GPTQModel to load, optionally in another dtype, leaving ``model`` untouched."""
    state = None if dtype is None else {k: v.to(dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(directory, state_dict=state)
    if dtype is not None:
        cfg_path = directory / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["dtype"] = cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
        cfg_path.write_text(json.dumps(cfg, indent=2))


class _GPTQModel(Method):
    offloadable = False  # the peer's own code needs every weight in place

    def check_installed(self) -> None:
        require("gptqmodel", PACKAGE, self.name)

    def check_config(self, cfg) -> None:
        if cfg.bits != 4 or cfg.group_size <= 0:
            raise MethodError(f"method={self.name} is compared at 4 bits with a group size (its packed layouts); "
                              f"got bits={cfg.bits} group_size={cfg.group_size}")

    awq = False

    def quantize_config(self, cfg):
        raise NotImplementedError

    def quantize_kwargs(self) -> dict:
        """Extra arguments of GPTQModel's ``quantize`` (its default backend where none)."""
        return {}

    def quantize(self, model, calib, cfg) -> QuantResult:
        self.check_installed()
        if calib is None:
            raise ValueError(f"{self.name} needs calibration data")
        self.check_config(cfg)
        # 7.7 wants at least 2 CPU workers (its model loader pool takes 2) but defaults to cores/2
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, ((os.cpu_count() or 1) + 1) // 2)))
        from gptqmodel import GPTQModel

        t0 = time.perf_counter()
        spec, targets = prepare_targets(model, cfg)
        rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calib.input_ids.tolist()]
        with tempfile.TemporaryDirectory(prefix="gptqmodel-") as tmp, _inside(Path(tmp)):
            src, dst = Path(tmp) / "src", Path(tmp) / "quantized"
            _save_copy(model, src, _half_dtype() if self.awq else None)  # its CPU AWQ packs only fp16/bf16
            calib_tokenizer(calib, self.name).save_pretrained(src)
            peer = GPTQModel.load(str(src), self.quantize_config(cfg), device="cpu")
            peer.quantize(rows, batch_size=cfg.batch_size, **self.quantize_kwargs())
            peer.save(str(dst))
            del peer
            qweights = unpack_checkpoint(dst, targets, self.awq)
            adopt(model, _read_tensors(dst), qweights)
        return QuantResult(self.name, time.perf_counter() - t0, peak_rss_mb(), [], qweights)


def _half_dtype() -> torch.dtype:
    """The session's compute dtype when it is a half type (bf16 where the CPU is fast at it), else fp16."""
    dtype = current_forward_dtype()
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


@register("gptqmodel_awq", PeerAWQConfig)
class GPTQModelAWQ(_GPTQModel):
    awq = True

    def quantize_kwargs(self) -> dict:
        from gptqmodel import BACKEND

        return {"backend": BACKEND.AWQ_TORCH}  # the CPU kernel: AUTO means AWQ_GEMM, which needs CUDA

    def quantize_config(self, cfg):
        from gptqmodel import QuantizeConfig

        return QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.symmetric, method="awq", format="gemm")


@register("gptqmodel_gptq", GPTQConfig)
class GPTQModelGPTQ(_GPTQModel):
    def quantize_config(self, cfg):
        from gptqmodel import QuantizeConfig

        static = cfg.act_order == "static"
        order = {"act_group_aware": True} if cfg.act_order == "group" else {}  # GPTQModel's own GAR
        return QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.symmetric, method="gptq",
                              desc_act=static, static_groups=static, damp_percent=cfg.damp_percent, **order)
