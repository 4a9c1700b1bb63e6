"""Calibration sets: named shipped traffic or a local file, cut into token windows.

A set is a token stream (plain text tokenized as is; chat conversations rendered through the
tokenizer's chat template). ``n_samples`` windows of ``seqlen`` tokens are drawn from it with a
seeded generator: non-overlapping and spread over the whole stream (one per equal stretch) when it is
long enough, random offsets otherwise.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import hub_data
from harness.data import CALIB_DIR
from harness.errors import HarnessError
from harness.textfiles import check_long_enough, read_text_file

NAMED = {
    "prose": ["prose.txt"],
    "code": ["code.txt"],
    "chat": ["chat.jsonl"],
    "multilingual": ["multilingual.txt"],
    "mixed": ["prose.txt", "code.txt", "chat.jsonl", "multilingual.txt"],
    "pile_val": ["hub:pile_val"],  # the AWQ paper's calibration set, from the hub (harness/hub_data.py)
}
CHOICES = (*NAMED, "file")
TEXT_SUFFIXES = (".txt", ".md", "")
SHIPPED = tuple(n for n, files in NAMED.items() if not any(f.startswith("hub:") for f in files))  # usable offline


@dataclass
class CalibSet:
    name: str
    input_ids: torch.Tensor  # [n_samples, seqlen] long
    source: str
    stream_tokens: int
    tokenizer: Any = field(default=None, repr=False, compare=False)  # peers' tools (methods/peers/) want it

    @property
    def n_samples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seqlen(self) -> int:
        return self.input_ids.shape[1]


def _render_chat(messages, tok) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)  # base models have no template


def read_documents(path: Path, tok) -> list[str]:
    """Documents of a .txt (one) or .jsonl (one per line: {"text": ...} or {"messages": [...]}) file."""
    if hub_data.is_hub(path.name):
        return hub_data.documents(path.name)
    if not path.is_file():
        raise HarnessError(f"calibration file not found: {path}")
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(read_text_file(path, "calibration file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise HarnessError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
                docs.append(_render_chat(rec["messages"], tok))
            elif isinstance(rec, dict) and isinstance(rec.get("text"), str):
                docs.append(rec["text"])
            else:
                raise HarnessError(f"{path}:{i}: expected an object with \"text\" or \"messages\"")
        return docs
    if path.suffix in TEXT_SUFFIXES:
        return [read_text_file(path, "calibration file")]
    raise HarnessError(f"calibration file {path} must be .txt or .jsonl")


def token_stream(docs: list[str], tok) -> torch.Tensor:
    sep = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ids: list[int] = []
    for d in docs:
        if d.strip():
            ids.extend(tok(d, add_special_tokens=False)["input_ids"] + sep)
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, n: int, seqlen: int, gen: torch.Generator) -> torch.Tensor:
    n_full = stream.numel() // seqlen
    if n_full >= n:
        # stratified: one random slot in each of n equal stretches, so a text made of parts
        # (languages, documents) is covered end to end rather than by a random cluster of slots
        edges = torch.linspace(0, n_full, n + 1).long().tolist()
        slots = [int(torch.randint(a, b, (1,), generator=gen)) for a, b in zip(edges[:-1], edges[1:])]
        starts = torch.tensor(slots) * seqlen
    else:
        starts = torch.randint(0, stream.numel() - seqlen + 1, (n,), generator=gen).sort().values
    return torch.stack([stream[s : s + seqlen] for s in starts.tolist()])


def repeat_warning(source: str, tokens: int, n_windows: int, seqlen: int) -> str:
    return (f"calibration text {source} has {tokens} tokens but {n_windows} windows x {seqlen} need "
            f"{n_windows * seqlen}: windows overlap, so the calibration data is smaller than asked "
            f"(GPTQ overfits small sets); add text or lower calib.n_samples / calib.seqlen")


def source_files(cfg) -> list[Path]:
    if cfg.name == "file":
        return [Path(cfg.path).expanduser()]
    return [CALIB_DIR / f for f in NAMED[cfg.name]]


def check(cfg) -> None:
    """Everything about a calibration config that needs no tokenizer: run before the model loads."""
    if cfg.name not in CHOICES:
        raise HarnessError(f"unknown calibration set {cfg.name!r}; choose one of: {', '.join(CHOICES)}")
    if cfg.n_samples < 1 or cfg.seqlen < 2:
        raise HarnessError(f"calib.n_samples must be >= 1 and calib.seqlen >= 2 (got {cfg.n_samples}, {cfg.seqlen})")
    if cfg.name != "file":
        return
    if not cfg.path:
        raise HarnessError("calib=file needs calib.path=FILE (.txt or .jsonl)")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise HarnessError(f"calibration file not found: {cfg.path}")
    if path.suffix not in (".jsonl", *TEXT_SUFFIXES):
        raise HarnessError(f"calibration file {path} must be .txt or .jsonl")
    read_text_file(path, "calibration file")
    if path.suffix != ".jsonl":  # a chat template adds tokens, so only plain text has a byte bound
        check_long_enough(path, cfg.seqlen, "calibration file", "calib.seqlen")


def load(cfg, tok) -> CalibSet:
    check(cfg)
    files = source_files(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    streams = [token_stream(read_documents(f, tok), tok) for f in files]
    for f, s in zip(files, streams):
        if s.numel() < cfg.seqlen:
            raise HarnessError(
                f"calibration text {f} has {s.numel()} tokens, fewer than calib.seqlen={cfg.seqlen}; "
                f"give a longer text or lower calib.seqlen"
            )
    # a mixed set draws an equal share of windows from each source
    shares = [cfg.n_samples // len(streams) + (i < cfg.n_samples % len(streams)) for i in range(len(streams))]
    windows = [sample_windows(s, k, cfg.seqlen, gen) for s, k in zip(streams, shares) if k]
    for f, s, k in zip(files, streams, shares):
        if k * cfg.seqlen > s.numel():
            print(f"[harness] warning: {repeat_warning(f.name, s.numel(), k, cfg.seqlen)}", file=sys.stderr)
    return CalibSet(
        name=cfg.name,
        input_ids=torch.cat(windows),
        source=", ".join(str(f) if cfg.name == "file" else f.name for f in files),
        stream_tokens=sum(s.numel() for s in streams),
        tokenizer=tok,
    )
