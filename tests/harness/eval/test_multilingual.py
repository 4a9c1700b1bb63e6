"""multilingual end to end on a tiny random model: per-language perplexity equals the perplexity
suite's on the same windows, and fidelity to itself is exact."""
import pytest

from harness.errors import HarnessError
from harness.eval import multilingual, perplexity
from tests.conftest import tiny_model
from tests.harness.eval.suite_helpers import by_metric, eval_cfg, perturbed


def test_every_shipped_language_is_found():
    codes = list(multilingual.language_texts([]))
    assert len(codes) >= 9 and {"en", "de", "ru", "pl"} <= set(codes)
    with pytest.raises(HarnessError, match="no shipped text for language 'xx'; choose from: de,"):
        multilingual.language_texts(["de", "xx"])


def test_rows_per_language(smol_tokenizer):
    cfg = eval_cfg(**{"multilingual.languages": ["de", "ru"], "multilingual.seqlen": 64,
                      "multilingual.max_windows": 3, "fidelity_top_k": 16})
    suite = multilingual.SUITE
    s = suite.settings(cfg)
    data = suite.prepare(smol_tokenizer, s)
    model = tiny_model("llama")
    fp = suite.evaluate(model, smol_tokenizer, data, s)
    ppl = {r["task"]: r for r in fp.rows if r["metric"] == "ppl_token"}
    assert set(ppl) == {"de", "ru"}
    for code in ppl:
        expected = perplexity.evaluate(model, data.texts[code], batch_size=2)
        assert ppl[code]["value"] == pytest.approx(expected["value"], rel=1e-5)
        assert ppl[code]["stderr"] == pytest.approx(expected["stderr"], rel=1e-4)
        assert ppl[code]["n"] == 3 and ppl[code]["seqlen"] == 64 and len(ppl[code]["samples"]) == 3
    same = suite.evaluate(model, smol_tokenizer, data, s, reference=fp.reference)
    assert by_metric(same.rows, "ru")["kl_to_fp"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert by_metric(same.rows, "de")["top1_agree_fp"]["value"] == 1.0
    other = suite.evaluate(perturbed(model, 0.5), smol_tokenizer, data, s, reference=fp.reference)
    assert by_metric(other.rows, "de")["kl_to_fp"]["value"] > 1e-6  # a random model is near-uniform: small but non-zero
