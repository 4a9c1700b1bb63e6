"""Synthetic result rows for the report, decision and results tests (the schema harness.run writes)."""
import math

import numpy as np
import pytest

from harness import results, store
from methods.fp import FP

PARAMS = {"params_total": 1_000_000, "params_quantized": 800_000, "symmetric": False}
N_WINDOWS = 24


def run_rows(method, bits, group, rows, calib="prose", calib_samples=32, quant_seconds=10.0):
    """One run's rows (FP reference rows included, as the harness writes them)."""
    chash = f"{method}{bits}g{group}{calib}{calib_samples}"
    common = {"run_id": chash, "started_at": "2026-01-01T00:00:00", "git_sha": "abc", "model": "tiny",
              "calib": calib, "calib_samples": calib_samples, "calib_seqlen": 256, "config_hash": chash,
              "versions": "{}", **PARAMS, "quant_groups": 800_000 // (group if group > 0 else 800_000)}
    out = []
    for r in rows:
        is_fp = r.get("method") == FP
        out.append({**common, "method": FP if is_fp else method, "bits": 16 if is_fp else bits,
                    "group_size": -1 if is_fp else group, "quant_seconds": 0.0 if is_fp else quant_seconds, **r})
    return results.to_frame(out)


def ppl_row(nll: np.ndarray, task="prose_en", **kw):
    return {"suite": "perplexity", "task": task, "metric": "ppl_token", "value": float(np.exp(nll.mean())),
            "stderr": float(np.exp(nll.mean()) * nll.std(ddof=1) / math.sqrt(len(nll))), "n": len(nll),
            "samples": nll.tolist(), "seqlen": 512, "windows": len(nll), "tokens": 511 * len(nll), **kw}


def score_row(passed: np.ndarray, task="humaneval", **kw):
    p = passed.mean()
    return {"suite": "code", "task": task, "metric": "pass@1", "value": float(p),
            "stderr": float(math.sqrt(p * (1 - p) / len(passed))), "n": len(passed), "samples": passed.tolist(), **kw}


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory):
    """FP, RTN (clearly worse), AWQ g64 and GPTQ g128 (indistinguishable from each other) on
    perplexity and code; a json suite with stderr only; a salience study."""
    rng = np.random.default_rng(0)
    fp_nll = rng.normal(2.5, 0.4, N_WINDOWS)
    awq_nll = fp_nll + 0.01 + rng.normal(0, 0.002, N_WINDOWS)
    gptq_nll = awq_nll + rng.normal(0, 0.01, N_WINDOWS)  # zero-mean noise around AWQ: a tie
    rtn_nll = fp_nll + 0.25 + rng.normal(0, 0.01, N_WINDOWS)
    fp_pass = (rng.random(40) < 0.6).astype(float)
    awq_pass = fp_pass.copy()
    rtn_pass = fp_pass.copy()
    rtn_pass[np.flatnonzero(fp_pass)[:12]] = 0.0  # RTN breaks 12 problems FP solves
    json_row = lambda v: {"suite": "json", "task": "schema", "metric": "json_valid", "value": v, "stderr": 0.02, "n": 100}  # noqa: E731
    runs = [
        run_rows(FP, 16, -1, [ppl_row(fp_nll, method=FP), score_row(fp_pass, method=FP),
                                {**json_row(0.95), "method": FP}]),
        run_rows("rtn", 4, 64, [ppl_row(rtn_nll), score_row(rtn_pass), json_row(0.80)], quant_seconds=1.0),
        run_rows("awq", 4, 64, [ppl_row(awq_nll), score_row(awq_pass), json_row(0.94)], quant_seconds=60.0),
        run_rows("gptq", 4, 128, [ppl_row(gptq_nll), score_row(awq_pass), json_row(0.93)], quant_seconds=40.0),
        run_rows("salience", 3, -1, [{"suite": "salience", "task": f"activation@{f}", "metric": "ppl_token",
                                      "value": v, "stderr": 0.1, "n": 8} for f, v in (("1%", 12.0), ("0.1%", 13.5))]),
    ]
    root = tmp_path_factory.mktemp("store")
    for df in runs:
        store.append(df, root, df[df.method != FP].method.iloc[0] if (df.method != FP).any() else FP)
    return root


