import os
import subprocess
import sys

import pytest
import torch

from harness import sanity
from harness.config import EvalConfig, HarnessConfig, SanityConfig
from harness.data import EVAL_DIR
from harness.errors import HarnessError
from harness.eval import perplexity
from tests.conftest import tiny_model


def _cfg(**sanity_kw):
    return HarnessConfig(eval=EvalConfig(seqlen=64, max_windows=6, batch_size=3), sanity=SanityConfig(**sanity_kw))


@pytest.fixture(scope="module")
def prepared(smol_tokenizer):
    cfg = _cfg()
    return {"perplexity": [perplexity.prepare(EVAL_DIR / "prose_en.txt", smol_tokenizer, 64, cfg.eval.max_windows)]}


def _guard(model, tok, prepared, **kw):
    return sanity.Guard.open(model, tok, prepared, _cfg(**kw), "tiny")


def _garble(model):
    """Wrong weight scales (as from a zero point off by one): confident, wrong predictions."""
    with torch.no_grad():
        model.lm_head.weight.mul_(30)


def test_healthy_model_passes_against_fp_on_the_same_windows(smol_tokenizer, prepared):
    model = tiny_model("llama")
    guard = _guard(model, smol_tokenizer, prepared, probe_windows=4)
    res = guard.check_model(model, "rtn")
    assert res.windows == 4 and res.task == "prose_en"
    assert res.ppl == pytest.approx(res.fp_ppl, rel=1e-6)  # same weights, same 4 windows
    assert res.bound == pytest.approx(10 * res.fp_ppl)
    assert "prose_en" in res.summary()


def test_variant_with_nan_logits_fails_naming_the_method(smol_tokenizer, prepared):
    model = tiny_model("llama")
    guard = _guard(model, smol_tokenizer, prepared)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(HarnessError) as e:
        guard.check_model(model, "gptqmodel_gptq")
    msg = str(e.value)
    assert "method=gptqmodel_gptq" in msg and "NaN/inf" in msg and "quantized weights" in msg and "\n" not in msg


def test_variant_far_above_fp_fails(smol_tokenizer, prepared):
    model = tiny_model("llama")
    guard = _guard(model, smol_tokenizer, prepared)
    _garble(model)
    with pytest.raises(HarnessError, match=r"method=awq .*sanity.max_ppl_ratio=10\b"):
        guard.check_model(model, "awq")
    assert _guard(tiny_model("llama"), smol_tokenizer, prepared, max_ppl_ratio=float("inf")).check_model(model, "awq")


def test_broken_fp_model_is_refused_and_named(smol_tokenizer, prepared):
    nan_model = tiny_model("llama")
    with torch.no_grad():
        nan_model.model.layers[0].self_attn.q_proj.weight[3, 5] = float("nan")
    with pytest.raises(HarnessError, match=r"the FP model \(fp, model=tiny\) produced NaN/inf .* its own weights"):
        _guard(nan_model, smol_tokenizer, prepared)
    garbage = tiny_model("llama")
    _garble(garbage)
    with pytest.raises(HarnessError, match=r"the FP model .* guessing uniformly over 49152 tokens"):
        _guard(garbage, smol_tokenizer, prepared)


def test_without_perplexity_suite_the_guard_scores_its_own_probe_for_fp(smol_tokenizer):
    model = tiny_model("llama")
    guard = _guard(model, smol_tokenizer, {}, probe_windows=2)
    assert guard.windows.shape[0] == 2 and guard.fp_ppl > 1
    _garble(model)
    with pytest.raises(HarnessError, match="x the FP perplexity"):
        guard.check_model(model, "rtn")


def test_rows_of_any_suite_far_above_fp_are_refused(smol_tokenizer, prepared):
    guard = _guard(tiny_model("llama"), smol_tokenizer, prepared)
    fp = [{"suite": "multilingual", "task": "de", "metric": "ppl_token", "value": 39.6},
          {"suite": "json", "task": "json", "metric": "json_valid", "value": 0.9}]
    ok = [{"suite": "multilingual", "task": "de", "metric": "ppl_token", "value": 80.0},
          {"suite": "json", "task": "json", "metric": "json_valid", "value": 0.0}]
    guard.check_rows(ok, fp, "rtn")  # 2x FP, and scores are not perplexities
    bad = [{"suite": "multilingual", "task": "de", "metric": "ppl_token", "value": 119344.0}]
    with pytest.raises(HarnessError, match=r"method=rtn has ppl_token 1\.193e\+05 on multilingual/de"):
        guard.check_rows(bad, fp, "rtn")
    with pytest.raises(HarnessError):
        guard.check_rows([{**bad[0], "value": float("nan")}], fp, "rtn")


def test_disabled_guard_checks_nothing(smol_tokenizer, prepared):
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    assert _guard(model, smol_tokenizer, prepared, enabled=False) is None


def run_cli(tmp_path, model_dir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "harness", "method=rtn", "model=path", f"model.path={model_dir}",
         "eval=perplexity", f"eval.texts=[{EVAL_DIR / 'prose_en.txt'}]", "eval.seqlen=64", "eval.max_windows=4",
         "calib.n_samples=2", "calib.seqlen=32", f"hydra.run.dir={tmp_path / 'OUT'}",
         f"cache_dir={tmp_path / 'cache'}", f"store_dir={tmp_path / 'store'}", *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def assert_stopped(r, tmp_path, needle):
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sanity check failed: ") and needle in last, last
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "OUT" / "results.csv").exists()
    assert not list((tmp_path / "store").rglob("rtn/*.parquet"))  # nothing of the variant stored


def test_cli_stops_before_reporting_a_variant_that_fails_the_guard(tiny_llama_dir, tmp_path):
    r = run_cli(tmp_path, tiny_llama_dir, "sanity.max_ppl_ratio=0.5")
    assert_stopped(r, tmp_path, "method=rtn")
    assert "sanity.max_ppl_ratio=0.5" in r.stderr


def test_cli_stops_on_a_broken_fp_model_before_any_suite(tmp_path, smol_tokenizer):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:15, 0] = 1e4  # a few huge weights, as in a corrupted file
        model.lm_head.weight.mul_(30)
    model.save_pretrained(tmp_path / "broken")
    smol_tokenizer.save_pretrained(tmp_path / "broken")
    r = run_cli(tmp_path, tmp_path / "broken")
    assert_stopped(r, tmp_path, "the FP model (fp, model=path)")
