"""What a session runs: a list of variants, each a method config plus a calibration config.

``python -m harness method=awq`` plans one variant (after the FP reference when ``reference=true``);
``variants=[fp,rtn,awq,gptq]`` plans several, the user's ``method.*`` overrides applied to each
variant that has the field; a study (``+experiment=``) builds its own list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf, open_dict

import methods
from harness.cli_checks import CONF_DIR, check_choice
from methods.fp import FP


@dataclass
class Variant:
    method: Any  # the method's config node
    calib: Any  # the calibration config node (ignored by methods that read no calibration)
    columns: dict = field(default_factory=dict)  # extra columns a study tags on this variant's rows

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def entry(self):
        return methods.entry(self.method.name)


def variant_config(cfg, v: Variant):
    """The full config of one variant: the run's, with the variant's method and calibration."""
    out = cfg.copy()
    with open_dict(out):
        out.method = v.method
        out.calib = v.calib
        out.variants = []
    return out


def method_config(name: str, overrides: dict | None = None):
    """A method preset (a registered name, or a file in conf/method/) with ``overrides`` applied
    where the method's config has the field."""
    check_choice("method", name, "method in variants")
    preset_file = CONF_DIR / "method" / f"{name}.yaml"
    preset = OmegaConf.load(preset_file) if preset_file.is_file() else OmegaConf.create({"name": name})
    with open_dict(preset):
        preset.pop("defaults", None)
    entry = methods.entry(preset.get("name", name))
    node = OmegaConf.merge(OmegaConf.structured(entry.default_config()), preset)
    kept = {k: v for k, v in (overrides or {}).items() if k in entry.fields() and k != "name"}
    return OmegaConf.merge(node, kept)


def method_overrides(method_cfg) -> dict:
    """The fields of the composed ``method`` that differ from its preset's defaults: what the user
    changed on the command line (``method.bits=3``)."""
    default = OmegaConf.structured(methods.entry(method_cfg.name).default_config())
    return {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items() if default.get(k) != v}


# method fields with columns of their own (or none to show): not repeated in ``method_options``
OWN_COLUMNS = ("name", "bits", "group_size")


def options_label(method_cfg) -> str:
    """The method's settings that differ from its registered defaults, ``key=value`` sorted and
    space-separated (``clip_refine=2 loss=block``; "" for the defaults): what tells two runs of one
    method and width apart in a report."""
    changed = method_overrides(method_cfg)
    return " ".join(f"{k}={_option_text(v)}" for k, v in sorted(changed.items()) if k not in OWN_COLUMNS)


def _option_text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def reference_variant(cfg) -> Variant:
    return Variant(method_config(FP), cfg.calib)


def build(cfg) -> list[Variant]:
    """The plan of a plain run or of ``variants=[...]``; the FP reference first when reported."""
    if cfg.variants:
        overrides = method_overrides(cfg.method)
        plan = [Variant(method_config(str(n), overrides), cfg.calib) for n in cfg.variants]
    else:
        plan = [Variant(cfg.method, cfg.calib)]
    if cfg.reference and not any(v.entry.reference for v in plan):
        plan.insert(0, reference_variant(cfg))
    return unique(plan)


def unique(plan: list[Variant]) -> list[Variant]:
    """The plan without repeated configs (``variants=[rtn,rtn]``), first occurrence kept."""
    seen, out = set(), []
    for v in plan:
        key = OmegaConf.to_yaml(v.method) + (OmegaConf.to_yaml(v.calib) if v.entry.calibrated else "")
        key += repr(sorted(v.columns.items()))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out
