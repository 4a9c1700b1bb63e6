"""long_context: the buckets score the same tokens with more context; needles sit where asked."""
import pytest

from harness.errors import HarnessError
from harness.eval import long_context as lc
from tests.conftest import tiny_model
from tests.harness.eval.suite_helpers import by_metric, eval_cfg


def test_buckets_double_and_respect_every_cap():
    assert lc.buckets(0, 8192, 100_000) == [512, 1024, 2048, 4096, 8192]
    assert lc.buckets(2048, 8192, 100_000) == [512, 1024, 2048]
    assert lc.buckets(0, 8192, 3000) == [512, 1024, 2048]
    assert lc.buckets(0, 256, 3000) == []


def test_targets_are_evenly_spaced_after_the_longest_bucket():
    assert lc.target_ends(10_000, 2048, 3) == [2048, 6024, 10_000]
    assert lc.target_ends(10_000, 2048, 1) == [10_000]


@pytest.mark.parametrize("answer, ok", [("48213", True), ("The number is 48,213.", True), ("48214", False),
                                        ("I don't know", False), ("148213", False)])
def test_retrieval_is_the_first_number(answer, ok):
    assert lc.retrieved(answer, "48213") is ok


def test_needle_depth_and_length(smol_tokenizer):
    needles = lc.make_needles(smol_tokenizer, [512], [0.0, 0.5, 1.0], 1, seed=3)
    assert [n.depth for n in needles] == [0.0, 0.5, 1.0]
    for n in needles:
        sentence = f"The secret number of {n.key} is {n.value}."
        user = n.prompt.split("<|im_start|>user\n")[1]
        doc = user.split("\n\n")[0]
        pos = doc.index(sentence) / len(doc)
        assert abs(pos - n.depth) < 0.1
        assert 480 <= len(smol_tokenizer(doc)["input_ids"]) <= 620
        assert f"What is the secret number of {n.key}? Answer with the number only.<|im_end|>" in user


def test_suite_end_to_end(smol_tokenizer):
    cfg = eval_cfg(**{"long_context.n_targets": 2, "long_context.needle_depths": [0.0, 1.0],
                      "long_context.needle_max_new_tokens": 4, "fidelity_top_k": 8})
    s = lc.SUITE.settings(cfg)
    data = lc.SUITE.prepare(smol_tokenizer, s)
    assert sorted(data.windows) == [512, 1024]
    # every bucket ends on the same target tokens
    assert (data.windows[512][:, -256:] == data.windows[1024][:, -256:]).all()
    assert (data.windows[512] == data.windows[1024][:, -512:]).all()
    model = tiny_model("llama", max_position_embeddings=512)  # the 1024 bucket exceeds this model
    fp = lc.SUITE.evaluate(model, smol_tokenizer, data, s)
    tasks = {(r["task"], r["metric"]) for r in fp.rows}
    assert ("ctx512", "ppl_token") in tasks and ("ctx1024", "ppl_token") not in tasks
    assert ("needle512", "needle_match") in tasks and ("needle1024", "needle_match") not in tasks
    assert by_metric(fp.rows, "needle")["needle_match"]["n"] == 2
    ctx = by_metric(fp.rows, "ctx512")["ppl_token"]
    assert ctx["n"] == 2 and ctx["tokens"] == 512 and ctx["value"] > 1
    same = by_metric(lc.SUITE.evaluate(model, smol_tokenizer, data, s, reference=fp.reference).rows, "needle")
    assert same["kl_to_fp"]["value"] == pytest.approx(0.0, abs=1e-5) and same["exact_match_fp"]["value"] == 1.0


def test_bad_sizes_are_clear_errors(smol_tokenizer):
    with pytest.raises(HarnessError, match="leaves no bucket"):
        lc.SUITE.prepare(smol_tokenizer, lc.SUITE.settings(eval_cfg(**{"long_context.max_length": 256})))
    with pytest.raises(HarnessError, match="needle_depths must lie in"):
        lc.SUITE.prepare(smol_tokenizer, lc.SUITE.settings(eval_cfg(**{"long_context.needle_depths": [1.5]})))
