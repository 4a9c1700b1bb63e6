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
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.data import EVAL_DIR, shipped_eval_texts
from harness.errors import HarnessError
from harness.eval import perplexity

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


@torch.no_grad()
def tail_nll(model, windows: torch.Tensor, tail: int, batch_size: int, desc: str) -> torch.Tensor:
    """Summed NLL of the last ``tail`` tokens of each window, shape [n_windows] (float64)."""
    out = []
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, unit="batch", leave=False):
        batch = windows[i:i + batch_size].to(model.device)
        logits = model(input_ids=batch, use_cache=False).logits[:, -tail - 1:-1].float()
        if not torch.isfinite(logits).all():
            raise HarnessError(f"the model produced NaN/inf logits ({desc}); the quantized weights are broken")
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, -tail:].reshape(-1), reduction="none")
        out.append(nll.view(batch.shape[0], tail).double().sum(dim=1).cpu())
    return torch.cat(out)


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
    from harness.eval.generation import render_chat

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


class LongContextSuite:
    name = "long_context"

    def prepare(self, tok, cfg) -> LongContextData:
        c = cfg.eval.long_context
        if c.tail < 1 or c.tail >= 512:
            raise HarnessError(f"eval.long_context.tail must be in 1..511 (got {c.tail})")
        ids = long_stream(tok)
        # the model's own limit is only known after loading; evaluate() drops larger buckets
        lens = buckets(c.max_length, 1 << 30, ids.numel())
        if not lens:
            raise HarnessError(f"eval.long_context.max_length={c.max_length} leaves no bucket (the smallest is 512)")
        ends = target_ends(ids.numel(), lens[-1], c.n_targets)
        windows = {L: torch.stack([ids[e - L:e] for e in ends]) for L in lens}
        needles = make_needles(tok, lens, list(c.needle_depths), c.needle_repeats, cfg.seed) if c.needle_depths else []
        return LongContextData(windows, c.tail, needles)

    def evaluate(self, model, tok, data: LongContextData, cfg, reference=None):
        from harness.eval import SuiteOutput
        from harness.eval.fidelity import exact_match_rows, fidelity_rows, fp_reference, metric_row
        from harness.eval.generation import greedy_generate

        c, e = cfg.eval.long_context, cfg.eval
        limit = model_max_length(model)
        rows = []
        for L, windows in data.windows.items():
            if L > limit:
                continue
            nll = tail_nll(model, windows, data.tail, c.batch_size, desc=f"ppl ctx {L}")
            rows.append(perplexity.ppl_row(f"ctx{L}", nll, data.tail, L))
        needles = [n for n in data.needles if n.length <= limit]
        fp_ref = None
        if needles:
            answers = greedy_generate(model, tok, [n.prompt for n in needles], c.needle_max_new_tokens,
                                      batch_size=c.needle_batch_size, desc="needles")
            hits = [retrieved(a, n.value) for a, n in zip(answers, needles)]
            for L in sorted({n.length for n in needles}):
                rows.append(metric_row(f"needle{L}", "needle_match", [float(h) for h, n in zip(hits, needles)
                                                                      if n.length == L], binary=True))
            rows.append(metric_row("needle", "needle_match", [float(h) for h in hits], binary=True))
            pairs = [(n.prompt, n.value) for n in needles]
            if reference is None:
                fid, fp_ref = fp_reference(model, tok, pairs, task="needle", top_k=e.fidelity_top_k,
                                           batch_size=c.needle_batch_size)
                fp_ref = {"fidelity": fp_ref, "answers": answers}
                rows += fid
            else:
                rows += fidelity_rows(model, tok, pairs, reference["fidelity"], task="needle",
                                      batch_size=c.needle_batch_size)
                rows += exact_match_rows(answers, reference["answers"], task="needle")
        return SuiteOutput(rows, reference=fp_ref)


SUITE = LongContextSuite()
