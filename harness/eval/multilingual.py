"""Perplexity per language on the shipped texts (``lang_<code>.txt`` and ``prose_en.txt``), plus
fidelity to the FP model on the same windows.

Perplexity follows :mod:`harness.eval.perplexity` (same windows, same summary and standard error),
computed in the same forward pass as fidelity, which uses the same windows: the FP run keeps its top-k next-token log-probabilities at every position
(:class:`harness.eval.fidelity.FidelityReference`), the quantized run reports the mean KL(FP‖quant)
per window (coarse-grained to the FP top-k, see fidelity.py) and the share of positions whose argmax
equals FP's. Rows: ``task`` is the language code.

No generation check ("answer in the language asked"): on SmolLM2-135M-Instruct, asked "why is the sky
blue?" in each of the eight non-English languages, the FP model mostly restates or echoes the question
(de, it, pt, pl, ru) and rarely answers; a stopword-based language detector would then score copying
of the prompt's language, near the ceiling for FP and any working quantization, not multilingual
ability. Perplexity and KL to FP per language carry the signal instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.data import EVAL_DIR
from harness.errors import HarnessError
from harness.eval import SuiteOutput, perplexity
from harness.eval.fidelity import FidelityReference, coarse_kl, metric_row
from harness.eval.scoring import gathered_nll, window_logprobs
from harness.eval.views import view


def language_texts(languages: list[str]) -> dict[str, Path]:
    """Shipped text per language code: ``lang_<code>.txt``, and ``prose_en.txt`` for English."""
    shipped = {p.stem.removeprefix("lang_"): p for p in sorted(EVAL_DIR.glob("lang_*.txt"))}
    shipped["en"] = EVAL_DIR / "prose_en.txt"
    shipped = dict(sorted(shipped.items()))
    if not languages:
        return shipped
    bad = [c for c in languages if c not in shipped]
    if bad:
        raise HarnessError(f"no shipped text for language {bad[0]!r}; choose from: {', '.join(shipped)}")
    return {c: shipped[c] for c in languages}


@dataclass
class LanguageData:
    texts: dict[str, perplexity.EvalText]


def score_windows(model, windows: torch.Tensor, batch_size: int, top_k: int, reference=None, desc: str = ""):
    """One pass over the windows: per-window summed NLL [n] (float64) and either the FP top-k
    reference (``reference`` None) or per-window (mean KL to FP, top-1 agreement with FP)."""
    if reference is not None and len(reference.logprobs) != len(windows):
        raise HarnessError(f"FP reference has {len(reference.logprobs)} windows for {desc}, the suite has "
                           f"{len(windows)}; delete the FP reference cache and rerun")
    nll, vals, idx, kl, agree = [], [], [], [], []
    for j, lp in enumerate(window_logprobs(model, windows, batch_size, desc)):
        nll.append(gathered_nll(lp, windows[j, 1:]))
        if reference is None:
            v, i = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
            vals.append(v.clone())
            idx.append(i.to(torch.int32))
        else:
            p_top, p_idx = reference.logprobs[j], reference.indices[j]
            kl.append(coarse_kl(p_top, p_idx, lp).mean().item())
            agree.append((lp.argmax(-1) == p_idx[:, 0].long()).double().mean().item())
    nll = torch.tensor(nll, dtype=torch.float64)
    if reference is None:
        return nll, FidelityReference(vals, idx, top_k)
    return nll, (kl, agree)


@dataclass
class MultilingualSettings:
    languages: list[str]  # empty = every shipped language
    seqlen: int
    max_windows: int
    batch_size: int
    fidelity_top_k: int  # eval.fidelity_top_k


class MultilingualSuite:
    name = "multilingual"

    def settings(self, cfg) -> MultilingualSettings:
        return view(MultilingualSettings, cfg.eval.multilingual, fidelity_top_k=cfg.eval.fidelity_top_k)

    def prepare(self, tok, s: MultilingualSettings) -> LanguageData:
        paths = language_texts(s.languages)
        return LanguageData({code: perplexity.prepare(p, tok, s.seqlen, s.max_windows) for code, p in paths.items()})

    def evaluate(self, model, tok, data: LanguageData, s: MultilingualSettings, reference=None) -> SuiteOutput:
        rows, fp_refs = [], {}
        for code, text in data.texts.items():
            ref = None if reference is None else reference[code]
            nll, extra = score_windows(model, text.windows, s.batch_size, s.fidelity_top_k, ref, desc=code)
            seqlen = text.windows.shape[1]
            rows.append({**perplexity.ppl_row(code, nll, seqlen - 1, seqlen), "source": text.path})
            if reference is None:
                fp_refs[code] = extra
            else:
                rows += [metric_row(code, "kl_to_fp", extra[0]), metric_row(code, "top1_agree_fp", extra[1])]
        return SuiteOutput(rows, reference=fp_refs if reference is None else None)


SUITE = MultilingualSuite()
