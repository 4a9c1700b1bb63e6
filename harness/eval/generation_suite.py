"""The flow every generation suite shares: generate → score → fidelity → exact match.

A suite describes its prompts as a :class:`GenerationJob` and supplies a scorer (greedy outputs →
its own metric rows). :func:`evaluate_generation` then decodes greedily (teacher-forcing the
reference answers on the same prompt pass), scores, and adds the fidelity rows: on the FP run (``reference`` None) ``answer_nll`` plus the FP state to
cache (the FP top-k log-probabilities and the FP outputs); on a quantized run ``answer_nll``,
``kl_to_fp``, ``top1_agree_fp`` and ``exact_match_fp`` against that state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from harness.eval import SuiteOutput
from harness.eval.fidelity import FidelityScores, FpScores, exact_match_rows
from harness.eval.generation import greedy_generate
from harness.eval.views import GenerationSettings


@dataclass
class GenerationJob:
    task: str  # task of the fidelity and exact-match rows
    prompts: list[str]  # rendered prompts
    answers: list[str]  # the reference answer to each prompt (teacher-forced for fidelity)
    max_new_tokens: int
    stop: Sequence[str] = ()
    desc: str = "generate"  # progress-bar label of the decoding


Scorer = Callable[[list[str]], list[dict]]  # greedy outputs (prompt order) -> the suite's metric rows


def evaluate_generation(model, tok, job: GenerationJob, score: Scorer, s: GenerationSettings, reference=None, *,
                        outputs_key: str = "outputs") -> SuiteOutput:
    """The suite's rows (scorer rows, then fidelity rows, then exact match to FP) and, on the FP run,
    the reference ``{"fidelity": FidelityReference, outputs_key: outputs}`` to cache. The fidelity
    log-probs come from the decoding's own prompt pass (``greedy_generate(answers=...)``)."""
    n = len(job.prompts)
    scores = FpScores(n, s.fidelity_top_k) if reference is None else FidelityScores(reference["fidelity"], n)
    outputs = greedy_generate(model, tok, job.prompts, job.max_new_tokens, job.stop, batch_size=s.gen_batch_size,
                              desc=job.desc, answers=job.answers, on_answer=scores.add)
    rows = score(outputs)
    if reference is None:
        fid_rows, fid_ref = scores.result(job.task)
        return SuiteOutput(rows + fid_rows, reference={"fidelity": fid_ref, outputs_key: outputs})
    rows += scores.rows(job.task)
    rows += exact_match_rows(outputs, reference[outputs_key], task=job.task)
    return SuiteOutput(rows)
