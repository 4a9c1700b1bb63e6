"""One-line errors for the command-line mistakes users make most, checked before Hydra composes.

Hydra would report them too, but as several lines with a hint about stack traces; a user who typed
``method=awk`` deserves one sentence naming the valid choices.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.config import REGISTRY_GROUPS, schema_nodes
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


def schema_fields(group: str, choice: str | None) -> set[str] | None:
    nodes = schema_nodes().get(group)
    if not nodes:
        return None
    node = nodes.get(choice) or next(iter(nodes.values()))
    return {f.name for f in dataclasses.fields(node)}


def check_group_choices(argv: list[str]) -> None:
    chosen: dict[str, list[str]] = {}
    keyed: list[tuple[str, str]] = []
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
            keyed.append(tuple(key.split(".", 1)))
    for group, field in keyed:
        field = field.split(".", 1)[0]
        for choice in chosen.get(group, [None]):
            fields = schema_fields(group, choice)
            if fields is not None and field not in fields:
                raise HarnessError(
                    f"unknown option {group}.{field}"
                    f"{f' for {group}={choice}' if choice else ''}; valid options: {', '.join(sorted(fields))}"
                )
