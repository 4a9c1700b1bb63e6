"""Paper-protocol data from the Hugging Face hub through `datasets` (network or a warm cache).

Named as ``hub:<name>``: ``eval.texts=[hub:wikitext2]`` (WikiText-2 raw test split, documents
joined by blank lines as in the GPTQ/AWQ evaluations) and ``calib=pile_val`` (the first
``PILE_DOCS`` documents of the Pile validation split that AWQ calibrates on, streamed so the
whole file is not downloaded). Offline, each fails with one line saying what to do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import islice

from harness.errors import HarnessError

PREFIX = "hub:"
PILE_DOCS = 2000  # ~2M tokens: far more than 128 windows of 512 need


@dataclass(frozen=True)
class HubText:
    dataset: str
    config: str | None
    split: str
    field: str
    max_docs: int | None = None


SOURCES = {
    "wikitext2": HubText("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text"),
    "pile_val": HubText("mit-han-lab/pile-val-backup", None, "validation", "text", PILE_DOCS),
}


def is_hub(name) -> bool:
    return str(name).startswith(PREFIX)


def documents(name: str) -> list[str]:
    """The documents of ``hub:<name>`` (or ``<name>``)."""
    key = str(name).removeprefix(PREFIX)
    if key not in SOURCES:
        raise HarnessError(f"unknown hub text {name!r}; choose one of: {', '.join(PREFIX + k for k in SOURCES)}")
    src = SOURCES[key]
    try:
        import datasets

        ds = datasets.load_dataset(src.dataset, src.config, split=src.split, streaming=src.max_docs is not None)
        docs = [row[src.field] for row in islice(ds, src.max_docs)]
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        raise HarnessError(f"cannot load {src.dataset} ({src.split}) for {PREFIX}{key} via `datasets` ({why}); "
                           f"run once with network access and HF_HUB_OFFLINE=0 to cache it "
                           f"({str(e).splitlines()[0][:120]})") from None
    if not docs:
        raise HarnessError(f"{PREFIX}{key}: {src.dataset} ({src.split}) returned no documents")
    return docs


def text(name: str) -> str:
    return "\n\n".join(documents(name))
