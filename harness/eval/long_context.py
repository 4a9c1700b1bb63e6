"""Long prompts: perplexity by context length, and needle retrieval.

Context-length buckets are 512, 1024, 2048, ... up to the smallest of ``max_length``, the model's
``max_position_embeddings`` and what the shipped text allows.

Perplexity protocol (so that buckets measure the benefit of context, not different text): the shipped
eval texts are concatenated into one token stream; ``n_targets`` target chunks of ``tail`` tokens are
chosen, evenly spaced, all ending at or after the largest bucket. For bucket L every target chunk is
scored with exactly the L - tail tokens before it as context (a window of L tokens whose last ``tail``
tokens are predicted). Every bucket therefore scores the same tokens; only the context differs.
Perplexity rows come from :func:`harness.eval.perplexity.ppl_row` over targets.

Needle retrieval: a sentence "The secret number of <key> is <value>." is placed at depths 0..100%
(sentence boundaries) of English filler of about L tokens, followed by the question; the greedy answer
is correct when its first number equals the value. Rows per bucket with binomial standard errors;
fidelity to FP (teacher-forced on the correct value) and exact match of the answers vs FP over all
needle prompts.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from harness.data import EVAL_DIR, shipped_eval_texts
from harness.errors import HarnessError
from harness.eval import SuiteOutput, perplexity
from harness.eval.fidelity import metric_row
from harness.eval.generation import render_chat
from harness.eval.generation_suite import GenerationJob, evaluate_generation
from harness.eval.scoring import window_nll
from harness.eval.views import GenerationSettings, view

KEYS = ["the blue lantern", "the harbour gate", "the copper kettle", "the north tower", "the old violin",
        "the garden shed", "the silver compass", "the night train", "the paper kite", "the stone bridge",
        "the red bicycle", "the village clock"]
QUESTION = "What is the secret number of {key}? Answer with the number only."


def buckets(max_length: int, model_max: int, available: int) -> list[int]:
    """512, 1024, ... up to min(max_length (<= 0: no cap), model_max, available)."""
    cap = min(model_max, available) if max_length <= 0 else min(max_length, model_max, available)
    out, L = [], 512
    while L <= cap:
        out.append(L)
        L *= 2
    return out


def model_max_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


# ---------------------------------------------------------------- perplexity by context length

def long_stream(tok) -> torch.Tensor:
    text = "\n\n".join(perplexity.read_text(p) for p in shipped_eval_texts())
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def target_ends(n_tokens: int, longest: int, n_targets: int) -> list[int]:
    """End positions (exclusive) of the target chunks: evenly spaced in [longest, n_tokens]."""
    if n_targets < 1:
        raise HarnessError(f"eval.long_context.n_targets must be >= 1 (got {n_targets})")
    if n_targets == 1:
        return [n_tokens]
    span = n_tokens - longest
    return [longest + (span * i) // (n_targets - 1) for i in range(n_targets)]


# ---------------------------------------------------------------- needle retrieval

@dataclass
class Needle:
    length: int  # bucket (target filler tokens)
    depth: float
    key: str
    value: str
    prompt: str  # rendered chat prompt


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


def make_needles(tok, lengths: list[int], depths: list[float], repeats: int, seed: int) -> list[Needle]:
    sentences = _sentences(perplexity.read_text(EVAL_DIR / "prose_en.txt"))
    sizes = [len(tok(" " + s, add_special_tokens=False)["input_ids"]) for s in sentences]
    rng = random.Random(seed)
    out = []
    for L in lengths:
        for d in depths:
            if not 0.0 <= d <= 1.0:
                raise HarnessError(f"eval.long_context.needle_depths must lie in [0, 1] (got {d})")
            for _ in range(repeats):
                key, value = rng.choice(KEYS), str(rng.randrange(10000, 100000))
                start, picked, total = rng.randrange(len(sentences)), [], 0
                while total < L:  # cycle through the prose from a random sentence until ~L tokens
                    i = (start + len(picked)) % len(sentences)
                    picked.append(sentences[i])
                    total += sizes[i]
                at = round(d * len(picked))
                needle = f"The secret number of {key} is {value}."
                doc = " ".join(picked[:at] + [needle] + picked[at:])
                msg = f"{doc}\n\n{QUESTION.format(key=key)}"
                out.append(Needle(L, d, key, value, render_chat(tok, [{"role": "user", "content": msg}])))
    return out


def retrieved(answer: str, value: str) -> bool:
    m = re.search(r"\d[\d,]*", answer)
    return m is not None and m.group().replace(",", "") == value


# ---------------------------------------------------------------- suite

@dataclass
class LongContextData:
    windows: dict[int, torch.Tensor]  # bucket -> [n_targets, bucket] token windows
    tail: int
    needles: list[Needle]


@dataclass
class LongContextSettings:
    max_length: int  # largest bucket; <= 0 means the model's limit
    tail: int
    n_targets: int
    needle_depths: list[float]  # empty = no needles
    needle_repeats: int
    needle_max_new_tokens: int
    needle_batch_size: int
    batch_size: int
    fidelity_top_k: int  # eval.fidelity_top_k
    seed: int  # the run's seed: which keys, values and filler the needles get


def context_rows(model, data: LongContextData, batch_size: int, limit: int) -> list[dict]:
    """``ppl_token`` per bucket that fits the model (``limit`` tokens), over the last ``tail`` tokens."""
    rows = []
    for L, windows in data.windows.items():
        if L > limit:
            continue
        nll = window_nll(model, windows, batch_size, tail=data.tail, desc=f"ppl ctx {L}")
        rows.append(perplexity.ppl_row(f"ctx{L}", nll, data.tail, L))
    return rows


def needle_rows(needles: list[Needle], answers: list[str]) -> list[dict]:
    """``needle_match`` per bucket and over all needles (binomial standard errors)."""
    hits = [retrieved(a, n.value) for a, n in zip(answers, needles)]
    rows = []
    for L in sorted({n.length for n in needles}):
        rows.append(metric_row(f"needle{L}", "needle_match", [float(h) for h, n in zip(hits, needles)
                                                              if n.length == L], binary=True))
    rows.append(metric_row("needle", "needle_match", [float(h) for h in hits], binary=True))
    return rows


class LongContextSuite:
    name = "long_context"

    def settings(self, cfg) -> LongContextSettings:
        return view(LongContextSettings, cfg.eval.long_context, fidelity_top_k=cfg.eval.fidelity_top_k, seed=cfg.seed)

    def prepare(self, tok, s: LongContextSettings) -> LongContextData:
        if s.tail < 1 or s.tail >= 512:
            raise HarnessError(f"eval.long_context.tail must be in 1..511 (got {s.tail})")
        ids = long_stream(tok)
        # the model's own limit is only known after loading; evaluate() drops larger buckets
        lens = buckets(s.max_length, 1 << 30, ids.numel())
        if not lens:
            raise HarnessError(f"eval.long_context.max_length={s.max_length} leaves no bucket (the smallest is 512)")
        ends = target_ends(ids.numel(), lens[-1], s.n_targets)
        windows = {L: torch.stack([ids[e - L:e] for e in ends]) for L in lens}
        needles = make_needles(tok, lens, s.needle_depths, s.needle_repeats, s.seed) if s.needle_depths else []
        return LongContextData(windows, s.tail, needles)

    def evaluate(self, model, tok, data: LongContextData, s: LongContextSettings, reference=None) -> SuiteOutput:
        limit = model_max_length(model)
        rows = context_rows(model, data, s.batch_size, limit)
        needles = [n for n in data.needles if n.length <= limit]
        if not needles:
            return SuiteOutput(rows)
        job = GenerationJob("needle", [n.prompt for n in needles], [n.value for n in needles],
                            s.needle_max_new_tokens, desc="needles")
        gen = GenerationSettings(s.needle_batch_size, s.fidelity_top_k)
        out = evaluate_generation(model, tok, job, lambda answers: needle_rows(needles, answers), gen, reference,
                                  outputs_key="answers")
        return SuiteOutput(rows + out.rows, reference=out.reference)


SUITE = LongContextSuite()
