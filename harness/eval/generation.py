"""Prompt rendering and batched greedy decoding shared by the generation suites.

Prompts go through the tokenizer's chat template (instruct models); a tokenizer without one gets the
messages as plain text (base models). Decoding is greedy, batched with left padding so every row's
next token sits in the last column, and each row stops at EOS or at the first stop string.
"""
from __future__ import annotations

import copy
import inspect
import json
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.eval.decode_linear import few_row_linears
from harness.eval.kv_cache import decoding_cache


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def render_chat(tok, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text the model sees before its answer (generation prompt included)."""
    if has_chat_template(tok):
        return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    parts = []
    if tools:
        parts.append("Available functions:\n" + "\n".join(json.dumps(t) for t in tools))
    parts += [m["content"] for m in messages]
    return "\n\n".join(parts) + "\n\n"


def encode_prompt(tok, text: str) -> list[int]:
    """Token ids of a rendered prompt. A chat template already writes its special tokens; plain
    prompts for base models get the tokenizer's own (e.g. BOS)."""
    return tok(text, add_special_tokens=not has_chat_template(tok))["input_ids"]


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def positions_kept(model, n: int) -> dict:
    """``logits_to_keep=n`` where the model takes it (logits for the last ``n`` positions only), else
    nothing: callers index the logits from the end."""
    return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def decode_kwargs(model, cache, keep: int = 1) -> dict:
    """Cache argument (transformers renamed ``past_key_values`` to ``cache`` during 5.x) and, where the
    model takes it, ``logits_to_keep=keep``: decoding needs only the last position's logits, which
    spares the vocabulary projection over the whole prompt at prefill."""
    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache, **positions_kept(model, keep)}


def encode_answer(tok, answer: str) -> list[int]:
    """Token ids of a reference answer as it follows its prompt (no special tokens)."""
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise HarnessError("fidelity pairs need a non-empty prompt and reference answer")
    return ids


AnswerSink = Callable[[int, torch.Tensor, torch.Tensor], None]  # (prompt index, log-probs [T, vocab], answer ids [T])

# answer positions per teacher-forced forward, and rows teacher-forced together: the logits held at
# once stay near 4 rows × (longest answer) × vocab, as in a standalone fidelity pass
ANSWER_CHUNK = 64
FORCED_ROWS = 4


def _teacher_force(model, cache, last_logits, mask, positions, answers: list[list[int]], emit) -> None:
    """Log-softmax of every answer position of each row, scored on copies of the prompts' cache, so
    the prompts are not run twice. ``last_logits`` [B, vocab] predict each answer's first token;
    ``emit(row, logprobs, answer ids)`` is called once per row, as soon as its answer is complete."""
    for first in range(0, len(answers), FORCED_ROWS):
        rows = list(range(first, min(first + FORCED_ROWS, len(answers))))
        sel = torch.tensor(rows, device=mask.device)
        sub = copy.deepcopy(cache)  # the prompt cache itself goes on to greedy decoding
        if len(rows) < len(answers):
            sub.reorder_cache(sel)
        _force_rows(model, sub, last_logits[sel], mask[sel], positions[sel], [answers[r] for r in rows],
                    lambda i, lp, target, rows=rows: emit(rows[i], lp, target))


def _force_rows(model, cache, last_logits, mask, positions, answers: list[list[int]], emit) -> None:
    fed = [len(a) - 1 for a in answers]  # answer tokens fed; the last one only gets predicted
    width = max(fed)
    ids = torch.zeros((len(answers), width), dtype=torch.long)
    answer_mask = torch.zeros_like(ids)
    for i, a in enumerate(answers):
        ids[i, :fed[i]] = torch.tensor(a[:-1], dtype=torch.long)
        answer_mask[i, :fed[i]] = 1
    ids, answer_mask = ids.to(mask.device), answer_mask.to(mask.device)
    parts = [[last_logits[i:i + 1].float()] for i in range(len(answers))]

    def finish(i):
        emit(i, F.log_softmax(torch.cat(parts[i]), dim=-1).cpu(), torch.tensor(answers[i]))
        parts[i] = None

    for i in (i for i in range(len(answers)) if fed[i] == 0):
        finish(i)
    for start in range(0, width, ANSWER_CHUNK):
        end = min(width, start + ANSWER_CHUNK)
        # padding sits after each row's answer, so causal attention keeps it out of the real positions
        logits = model(input_ids=ids[:, start:end], attention_mask=torch.cat([mask, answer_mask[:, :end]], dim=-1),
                       position_ids=positions[:, -1:] + 1 + torch.arange(start, end, device=mask.device),
                       use_cache=True, **decode_kwargs(model, cache, keep=end - start)).logits
        for i in range(len(answers)):
            if parts[i] is not None and fed[i] > start:
                parts[i].append(logits[i, :min(fed[i], end) - start].float())
                if fed[i] <= end:
                    finish(i)


@torch.no_grad()
def _generate_batch(model, tok, rows: list[list[int]], max_new_tokens: int, stop: Sequence[str],
                    answers: list[list[int]] | None = None, emit=None) -> list[str]:
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    ids, mask = _left_pad(rows, pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    new = [[] for _ in rows]
    live = list(range(len(rows)))  # which input row each batch row still decoding is
    cache = decoding_cache(model)  # filled in place by each forward
    kwargs = decode_kwargs(model, cache)
    step_ids = ids
    for step in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        if step == 0 and answers is not None:
            _teacher_force(model, cache, out.logits[:, -1], mask, positions, answers, emit)
        nxt = out.logits[:, -1].float().argmax(-1)
        keep = []
        for b, t in enumerate(nxt.tolist()):
            if t == eos:
                continue
            row = new[live[b]]
            row.append(t)
            # only the tail can contain a fresh stop string; decoding it keeps this O(1) per step
            if stop and any(s in tok.decode(row[-32:], skip_special_tokens=False) for s in stop):
                continue
            keep.append(b)
        if not keep:
            break
        if len(keep) < len(live):
            # finished rows leave the batch: decoding cost follows the rows still running
            sel = torch.tensor(keep, device=nxt.device)
            cache.reorder_cache(sel)
            nxt, mask, positions = nxt[sel], mask[sel], positions[sel]
            live = [live[b] for b in keep]
        step_ids = nxt.unsqueeze(-1)
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=-1)
        positions = positions[:, -1:] + 1
    return [truncate_at_stop(tok.decode(n, skip_special_tokens=True), stop) for n in new]


def greedy_generate(model, tok, prompts: list[str], max_new_tokens: int, stop: Sequence[str] = (),
                    *, batch_size: int, desc: str = "generate", answers: Sequence[str] | None = None,
                    on_answer: AnswerSink | None = None) -> list[str]:
    """Greedy continuations of rendered ``prompts`` (same order), each cut before its first stop string.

    Prompts are batched by length (less padding); outputs do not depend on the batch size beyond
    floating-point noise, which the tests check on a random model. With reference ``answers`` (one
    per prompt), each batch's prompt pass is also used to teacher-force them: ``on_answer(i,
    logprobs, answer_ids)`` gets the log-softmax at each of answer ``i``'s positions, in batch order.
    """
    encoded = [encode_prompt(tok, p) for p in prompts]
    targets = None
    if answers is not None:
        if len(answers) != len(prompts) or on_answer is None or max_new_tokens < 1:
            raise ValueError("answers need one per prompt, an on_answer sink and max_new_tokens >= 1")
        targets = [encode_answer(tok, a) for a in answers]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    with few_row_linears(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start:start + batch_size]
            batch_answers = None if targets is None else [targets[i] for i in idx]
            emit = None if targets is None else (lambda b, lp, target, idx=idx: on_answer(idx[b], lp, target))
            texts = _generate_batch(model, tok, [encoded[i] for i in idx], max_new_tokens, stop, batch_answers, emit)
            for i, text in zip(idx, texts):
                outputs[i] = text
    return outputs
