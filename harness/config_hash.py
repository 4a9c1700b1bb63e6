"""The identity of a variant's numbers: a hash of everything that changes them."""
from __future__ import annotations

import hashlib
import json

from omegaconf import OmegaConf

import methods
from harness import models

# run-level settings that never change a number (where things are written, what is resumed, the plan,
# which numbers the guard refuses)
NOT_HASHED = ("cache_dir", "store_dir", "resume", "export", "variants", "sanity")


def config_hash(cfg) -> str:
    """Hash of the composed config of one variant (``cfg.method`` and ``cfg.calib`` are the variant's)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_HASHED:
        d.pop(key, None)
    device = models.resolve_device(d.get("model", {}).pop("device", "auto"))
    if device.type != "cpu":  # GPU kernels round differently; CPU runs keep the hashes they had before
        d["model"]["device"] = device.type
    compute = models.resolve_compute_dtype(d.get("model", {}).pop("compute_dtype", "auto"), device)
    if compute != "fp32":  # the dtype evaluation ran in, resolved; fp32 runs keep their earlier hashes
        d["model"]["compute_dtype"] = compute
    placement = d.get("model", {})
    placement.pop("offload_dir", None)  # where scratch files go never moves a number
    for key, unset in (("offload", "none"), ("device_map", None)):
        if placement.get(key, unset) == unset:
            placement.pop(key, None)  # unset: the hash runs had before these options existed
    name = d.get("method", {}).get("name")
    if name in methods.available() and methods.entry(name).reference:
        d["method"] = {"name": name}  # bits, groups, calibration do not touch the reference model
        d.pop("calib", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
