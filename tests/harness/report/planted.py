"""Planted runs shared by the report tests: FP, a variant indistinguishable from it, a clearly worse one."""
import numpy as np
import pandas as pd

from methods.fp import FP
from tests.harness.result_rows import ppl_row, run_rows


def planted_runs():
    """FP; AWQ with noise of mean exactly 0 around FP (not significant); RTN clearly worse; a json metric
    every variant scores 0 on (no signal); KL, agreement and answer NLL per item."""
    rng = np.random.default_rng(11)
    nll = rng.normal(2.5, 0.4, 16)
    zeros = {"suite": "json", "task": "schema", "metric": "schema_valid", "value": 0.0, "stderr": 0.0, "n": 16,
             "samples": [0.0] * 16}
    fp = [dict(ppl_row(nll), method=FP), dict(zeros, method=FP), dict(fidelity_row("answer_nll", nll / 4), method=FP)]
    noise = rng.normal(0, 0.05, 8)
    awq = [ppl_row(nll + np.concatenate([noise, -noise])), zeros, fidelity_row("kl_to_fp", rng.gamma(2, 0.02, 16)),
           fidelity_row("answer_nll", nll / 4 + 0.01), fidelity_row("top1_agree_fp", np.full(16, 0.9))]
    rtn = [ppl_row(nll + 0.25), zeros, fidelity_row("kl_to_fp", rng.gamma(2, 0.1, 16)),
           fidelity_row("answer_nll", nll / 4 + 0.2), fidelity_row("top1_agree_fp", np.full(16, 0.7))]
    return pd.concat([run_rows("awq", 4, 64, fp + awq), run_rows("rtn", 4, 128, fp + rtn, quant_seconds=1.0)],
                     ignore_index=True)


def fidelity_row(metric, values):
    v = np.asarray(values, dtype=float)
    return {"suite": "code", "task": "humaneval", "metric": metric, "value": float(v.mean()),
            "stderr": float(v.std(ddof=1) / np.sqrt(len(v))), "n": len(v), "samples": v.tolist()}
