"""code and json suites end to end on a tiny random model: in process (FP, self, perturbed) and
through the CLI (FP reference cached, RTN rows)."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from harness import results
from harness.eval import code, json_format
from tests.conftest import tiny_model
from tests.harness.eval.suite_helpers import by_metric, eval_cfg, perturbed

SUITES = {
    "code": (code, {"code.n_problems": 3, "code.max_new_tokens": 6}, code.TASK,
             ["pass@1"]),
    "json": (json_format, {"json.n_prompts": 3, "json.max_new_tokens": 6}, json_format.TASK,
             ["json_valid", "schema_valid", "field_accuracy"]),
}


@pytest.mark.parametrize("suite", list(SUITES))
def test_fp_self_and_perturbed(suite, smol_tokenizer):
    module, overrides, task, scores = SUITES[suite]
    cfg = eval_cfg(**overrides, fidelity_top_k=8, gen_batch_size=2)
    s = module.SUITE.settings(cfg)
    data = module.SUITE.prepare(smol_tokenizer, s)
    model = tiny_model("llama")
    fp = module.SUITE.evaluate(model, smol_tokenizer, data, s)
    rows = by_metric(fp.rows)
    assert set(rows) == {*scores, "answer_nll"}
    assert all(r["n"] == 3 and len(r["samples"]) == 3 and r["task"] == task for r in fp.rows)
    assert all(rows[m]["value"] == 0.0 for m in scores)  # random weights write neither code nor JSON
    assert rows["answer_nll"]["value"] > 5
    assert len(fp.reference["outputs"]) == 3

    same = by_metric(module.SUITE.evaluate(model, smol_tokenizer, data, s, reference=fp.reference).rows)
    assert same["kl_to_fp"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert same["top1_agree_fp"]["value"] == 1.0 and same["exact_match_fp"]["value"] == 1.0

    other = by_metric(module.SUITE.evaluate(perturbed(model, 0.5), smol_tokenizer, data, s,
                                            reference=fp.reference).rows)
    assert other["kl_to_fp"]["value"] > 1e-6
    assert other["answer_nll"]["value"] != rows["answer_nll"]["value"]


def test_cli_runs_code_and_json(tiny_llama_dir, tmp_path):
    out = tmp_path / "OUT"
    r = subprocess.run(
        [sys.executable, "-m", "harness", "method=rtn", "model=path", f"model.path={tiny_llama_dir}",
         "eval=quick", "eval.suites=[code,json]", "eval.code.n_problems=2", "eval.code.max_new_tokens=4",
         "eval.json.n_prompts=2", "eval.json.max_new_tokens=4", "eval.fidelity_top_k=8", "calib.n_samples=2",
         "calib.seqlen=32", f"hydra.run.dir={out}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    got = set(zip(df.method, df.suite, df.metric))
    for metric in ("pass@1", "answer_nll"):
        assert {("fp", "code", metric), ("rtn", "code", metric)} <= got
    for metric in ("kl_to_fp", "top1_agree_fp", "exact_match_fp"):
        assert ("rtn", "code", metric) in got and ("rtn", "json", metric) in got
    assert ("rtn", "json", "schema_valid") in got
    assert (df[~df.metric.map(results.is_descriptive)].n == 2).all()  # per-token statistics count tokens


def test_cli_bad_size_is_one_line(tiny_llama_dir, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "harness", "method=fp", "model=path", f"model.path={tiny_llama_dir}",
         "eval.suites=[code]", "eval.code.n_problems=500", f"hydra.run.dir={tmp_path / 'OUT'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and "n_problems=500 but HumanEval has 164" in r.stderr
    assert "Traceback" not in r.stderr
