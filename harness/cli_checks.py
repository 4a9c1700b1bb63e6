"""One-line errors for the command-line mistakes users make most, checked before Hydra composes.

Hydra would report them too, but as several lines with a hint about stack traces; a user who typed
``method=awk`` deserves one sentence naming the valid choices.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from harness.config import REGISTRY_GROUPS, HarnessConfig, schema_nodes
from harness.errors import HarnessError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "method", "calib", "eval", "experiment")


def group_choices(group: str) -> list[str]:
    """Preset files in conf/<group>/, plus every registered name for the registry groups."""
    names = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
    if group in REGISTRY_GROUPS:
        names |= set(schema_nodes()[group])
    return sorted(names)


def check_choice(group: str, value: str, where: str | None = None) -> None:
    choices = group_choices(group)
    if value not in choices:
        raise HarnessError(f"unknown {where or group} {value!r}; choose one of: {', '.join(choices)}")


def schema_node(group: str, choice: str | None):
    """The schema dataclass (or config instance) of ``group=choice``: the group's first when no
    choice is given; None for a group without one."""
    nodes = schema_nodes().get(group) or {}
    return nodes.get(choice) or next(iter(nodes.values()), None)


def schema_fields(group: str, choice: str | None) -> set[str] | None:
    node = schema_node(group, choice)
    return None if node is None else {f.name for f in dataclasses.fields(node)}


def check_group_choices(argv: list[str]) -> None:
    chosen: dict[str, list[str]] = {}
    keyed: list[tuple[str, str, str]] = []
    top: list[tuple[str, str]] = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key in GROUPS:
            values = [v.strip() for v in value.split(",")] if value else [""]
            for v in values:
                check_choice(key, v)
            chosen[key] = values
        elif "." in key and key.split(".", 1)[0] in GROUPS:
            keyed.append((*key.split(".", 1), value))
        else:
            top.append((key, value))
    for group, path, value in keyed:
        field = path.split(".", 1)[0]
        for choice in chosen.get(group, [None]):
            fields = schema_fields(group, choice)
            if fields is not None and field not in fields:
                raise HarnessError(
                    f"unknown option {group}.{field}"
                    f"{f' for {group}={choice}' if choice else ''}; valid options: {', '.join(sorted(fields))}"
                )
            check_value(f"{group}.{path}", value, _field_type(schema_node(group, choice), path))
    for key, value in top:
        check_value(key, value, _field_type(HarnessConfig, key))


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        int(v, 0)  # 0x10 and the like, which OmegaConf takes too
    return True


# OmegaConf's spellings of a bool (any case); it takes integers too
_BOOLS = {"true", "false", "yes", "no", "on", "off", "y", "n"}
_PARSERS = {bool: lambda v: v.lower() in _BOOLS or _is_int(v), int: _is_int, float: lambda v: float(v) is not None}
_KIND = {bool: "true or false", int: "a whole number", float: "a number"}


def check_value(key: str, value: str, kind: type | None) -> None:
    """A bool, int or float option given a value of another kind: one line naming the kind expected
    (Hydra would say it in four). Sweep lists are checked item by item; interpolations, quoted and
    bracketed values are left to Hydra."""
    if kind not in _PARSERS or not value or any(c in value for c in "$'\"([{"):
        return
    for item in (v.strip() for v in value.split(",")):
        if item == "null":
            continue  # Hydra says whether the option may be null
        try:
            ok = _PARSERS[kind](item)
        except ValueError:
            ok = False
        if not ok:
            raise HarnessError(f"{key}={item!r}: expected {_KIND[kind]}")


def _field_type(node, path: str) -> type | None:
    """The scalar type of the (dotted) field ``path`` of dataclass ``node``; None when it is not a
    plain bool, int or float (or Optional of one), or not a field at all."""
    for name in path.split("."):
        if node is None or not dataclasses.is_dataclass(node):
            return None
        try:
            hints = typing.get_type_hints(node if isinstance(node, type) else type(node))
        except (NameError, TypeError):  # an annotation that does not resolve: nothing to check
            return None
        node = hints.get(name)
    args = [a for a in typing.get_args(node) if a is not type(None)]
    if len(args) == 1 and type(None) in typing.get_args(node):
        node = args[0]  # Optional[X]
    return node if node in _PARSERS else None
