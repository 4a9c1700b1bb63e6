import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import sanity
from harness.config import EvalConfig, HarnessConfig, SanityConfig
from harness.data import EVAL_DIR
from harness.errors import HarnessError
from harness.eval import perplexity, scoring
from tests.conftest import tiny_model

REPO = Path(__file__).resolve().parents[2]


def _cfg(**sanity_kw):
    return HarnessConfig(eval=EvalConfig(seqlen=64, max_windows=6, batch_size=3), sanity=SanityConfig(**sanity_kw))


@pytest.fixture(scope="module")
def prepared(smol_tokenizer):
    cfg = _cfg()
    return {"perplexity": [perplexity.prepare(EVAL_DIR / "prose_en.txt", smol_tokenizer, 64, cfg.eval.max_windows)]}


def _fp_rows(model, prepared, with_samples=False):
    text = prepared["perplexity"][0]
    per_window = scoring.window_nll(model, text.windows, 3)
    row = perplexity.summarize(per_window, text.windows.shape[1] - 1)
    row.update(task=text.task, metric="ppl_token", suite="perplexity")
    if with_samples:
        row["samples"] = (per_window / (text.windows.shape[1] - 1)).tolist()
    return [row]


def test_healthy_model_passes_and_matches_fp_on_the_same_windows(smol_tokenizer, prepared):
    model = tiny_model("llama")
    rows = _fp_rows(model, prepared, with_samples=True)
    res = sanity.check(model, smol_tokenizer, prepared, rows, _cfg(probe_windows=4), "rtn")
    assert res.windows == 4 and res.task == "prose_en"
    assert res.ppl == pytest.approx(res.fp_ppl, rel=1e-6)  # same weights, same 4 windows
    assert res.bound == pytest.approx(10 * res.fp_ppl)
    assert "prose_en" in res.summary()


def test_without_samples_the_whole_text_fp_perplexity_is_the_reference(smol_tokenizer, prepared):
    model = tiny_model("llama")
    rows = _fp_rows(model, prepared)
    res = sanity.check(model, smol_tokenizer, prepared, rows, _cfg(), "rtn")
    assert res.fp_ppl == rows[0]["value"]


def test_nan_logits_fail_with_one_line(smol_tokenizer, prepared):
    model = tiny_model("llama")
    rows = _fp_rows(model, prepared)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(HarnessError) as e:
        sanity.check(model, smol_tokenizer, prepared, rows, _cfg(), "gptqmodel_gptq")
    assert "method=gptqmodel_gptq" in str(e.value) and "NaN/inf" in str(e.value) and "\n" not in str(e.value)


def _garble(model):
    """Wrong weight scales (as from a zero point off by one): confident, wrong predictions."""
    with torch.no_grad():
        model.lm_head.weight.mul_(30)


def test_perplexity_far_above_fp_fails(smol_tokenizer, prepared):
    model = tiny_model("llama")
    rows = _fp_rows(model, prepared)
    _garble(model)
    with pytest.raises(HarnessError, match=r"sanity.max_ppl_ratio=10\b"):
        sanity.check(model, smol_tokenizer, prepared, rows, _cfg(), "awq")
    # no limit lets the same model through
    assert sanity.check(model, smol_tokenizer, prepared, rows, _cfg(max_ppl_ratio=float("inf")), "awq") is not None


def test_without_perplexity_suite_the_bound_is_uniform_guessing(smol_tokenizer):
    model = tiny_model("llama")
    res = sanity.check(model, smol_tokenizer, {}, [], _cfg(probe_windows=2), "rtn")
    assert res.fp_ppl is None and res.bound == 10 * model.config.vocab_size and res.windows == 2
    _garble(model)
    with pytest.raises(HarnessError, match="perplexity of guessing uniformly"):
        sanity.check(model, smol_tokenizer, {}, [], _cfg(probe_windows=2), "rtn")


def test_disabled_guard_checks_nothing(smol_tokenizer, prepared):
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    assert sanity.check(model, smol_tokenizer, prepared, [], _cfg(enabled=False), "rtn") is None


def test_cli_stops_before_reporting_a_model_that_fails_the_guard(tiny_llama_dir, tmp_path):
    out = tmp_path / "OUT"
    r = subprocess.run(
        [sys.executable, "-m", "harness", "method=rtn", "model=path", f"model.path={tiny_llama_dir}",
         "eval=perplexity", f"eval.texts=[{EVAL_DIR / 'prose_en.txt'}]", "eval.seqlen=64", "eval.max_windows=4",
         "calib.n_samples=2", "calib.seqlen=32", "sanity.max_ppl_ratio=0.5", f"hydra.run.dir={out}",
         f"cache_dir={tmp_path / 'cache'}", f"store_dir={tmp_path / 'store'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sanity check failed: method=rtn") and "sanity.max_ppl_ratio=0.5" in last
    assert "Traceback" not in r.stderr
    assert not (out / "results.csv").exists()
