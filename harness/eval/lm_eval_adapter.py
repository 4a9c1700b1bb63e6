"""lm-evaluation-harness on the in-memory (quantized) model: ``eval=lm_eval eval.tasks=[...]``.

The model object is handed to ``lm_eval.models.huggingface.HFLM`` as is, so lm-eval scores exactly the
weights the harness just quantized. Tasks resolve through lm-eval's registry plus the tasks shipped in
``harness/data/lm_eval/`` (``qh_everyday_mc`` works offline); hub tasks need internet to download
their datasets. lm-eval is the optional extra ``lmeval`` and is imported only when this suite runs.

Rows: one per (task, metric) lm-eval reports, with lm-eval's own standard error, ``n`` = documents
scored and per-document ``samples`` for paired comparisons.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from harness.data import DATA_DIR
from harness.errors import HarnessError
from harness.eval import SuiteOutput
from harness.eval.views import plain, view

LOCAL_TASKS_DIR = DATA_DIR / "lm_eval"
INSTALL_HINT = "pip install quant-harness[lmeval]"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise HarnessError(f"the lm_eval suite needs lm-evaluation-harness; run: {INSTALL_HINT}") from None
    return lm_eval, TaskManager


@dataclass
class LmEvalData:
    tasks: list[str]


def task_manager():
    _, TaskManager = _lm_eval()
    return TaskManager(include_path=str(LOCAL_TASKS_DIR))


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def result_rows(results: dict) -> list[dict]:
    """lm-eval's ``results`` dict ({"results": {task: {"acc,none": .., "acc_stderr,none": ..}},
    "n-samples": .., "samples": ..}) as harness rows."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        n_info = results.get("n-samples", {}).get(task, {})
        docs = results.get("samples", {}).get(task, [])
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, flt = key.split(",", 1)
            name = metric if flt == "none" else f"{metric},{flt}"
            stderr = _float(metrics.get(f"{metric}_stderr,{flt}"))
            samples = [_float(d[metric]) for d in docs if isinstance(d.get(metric), (int, float, bool))]
            n = n_info.get("effective") or len(samples) or None
            row = {"task": task, "metric": name, "value": float(value),
                   "stderr": stderr if not math.isnan(stderr) else float("nan"), "n": n}
            if samples and len(samples) == n:
                row["samples"] = samples
            rows.append(row)
    return rows


@dataclass
class LmEvalSettings:
    tasks: list[str]  # eval.tasks: lm-eval task names
    batch_size: int
    max_length: int  # 0 = lm-eval's default
    num_fewshot: Optional[int]
    limit: int  # documents per task; <= 0 means all
    bootstrap_iters: int
    seed: int  # the run's seed, for every lm-eval random generator


class LmEvalSuite:
    name = "lm_eval"

    def check_installed(self) -> None:
        _lm_eval()

    def settings(self, cfg) -> LmEvalSettings:
        return view(LmEvalSettings, cfg.eval.lm_eval, tasks=plain(cfg.eval.tasks), seed=cfg.seed)

    def prepare(self, tok, s: LmEvalSettings) -> LmEvalData:
        tasks = list(s.tasks)
        if not tasks:
            raise HarnessError("eval=lm_eval needs eval.tasks=[...] (e.g. eval.tasks=[qh_everyday_mc])")
        known = set(task_manager().all_tasks)
        bad = [t for t in tasks if t not in known]
        if bad:
            local = sorted(p.stem for p in LOCAL_TASKS_DIR.glob("*.yaml"))
            raise HarnessError(f"unknown lm-eval task {bad[0]!r}; shipped offline tasks: {', '.join(local)} "
                               f"(or any task name lm-eval lists with `lm_eval ls tasks`)")
        return LmEvalData(tasks)

    def evaluate(self, model, tok, data: LmEvalData, s: LmEvalSettings, reference=None) -> SuiteOutput:
        lm_eval, _ = _lm_eval()
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=s.batch_size, max_length=s.max_length or None)
        out = lm_eval.simple_evaluate(model=lm, tasks=data.tasks, num_fewshot=s.num_fewshot,
                                      limit=s.limit if s.limit and s.limit > 0 else None,
                                      task_manager=task_manager(), log_samples=True, bootstrap_iters=s.bootstrap_iters,
                                      random_seed=s.seed, numpy_random_seed=s.seed, torch_random_seed=s.seed,
                                      fewshot_random_seed=s.seed)
        if out is None:
            raise HarnessError("lm-eval returned no results (only rank 0 reports; run the harness in one process)")
        return SuiteOutput(result_rows(out))


SUITE = LmEvalSuite()
