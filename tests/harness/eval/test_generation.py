"""Greedy decoding: batching does not change outputs, stop strings cut, EOS ends a row."""
import pytest
import torch

from harness.eval.generation import encode_prompt, greedy_generate, render_chat, truncate_at_stop
from tests.conftest import tiny_model

PROMPTS = [
    "Write a function that adds two numbers.",
    "List three colours.",
    "What is the capital of France? Answer in one word, then explain at length why it is so.",
    "hi",
]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=1)


def rendered(tok):
    return [render_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]


def test_render_chat_uses_template_and_plain_fallback(smol_tokenizer):
    text = render_chat(smol_tokenizer, [{"role": "user", "content": "hello"}])
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhello<|im_end|>" in text

    class Plain:
        chat_template = None
    plain = render_chat(Plain(), [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
    assert plain == "Be brief.\n\nhello\n\n"


def test_batched_equals_unbatched(model, smol_tokenizer):
    prompts = rendered(smol_tokenizer)
    one = greedy_generate(model, smol_tokenizer, prompts, 12, batch_size=1)
    many = greedy_generate(model, smol_tokenizer, prompts, 12, batch_size=4)
    assert one == many
    assert all(len(o) > 0 for o in one)


def test_matches_naive_greedy_loop(model, smol_tokenizer):
    prompt = rendered(smol_tokenizer)[2]
    ids = torch.tensor([encode_prompt(smol_tokenizer, prompt)])
    with torch.no_grad():
        for _ in range(10):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    naive = smol_tokenizer.decode(ids[0, -10:], skip_special_tokens=True)
    assert greedy_generate(model, smol_tokenizer, [prompt], 10, batch_size=1)[0] == naive


def test_stops_at_stop_string(model, smol_tokenizer):
    prompts = rendered(smol_tokenizer)
    free = greedy_generate(model, smol_tokenizer, prompts, 16, batch_size=4)
    # a stop string taken from the middle of each free-running output must cut it right there
    stops = [o[len(o) // 2:len(o) // 2 + 2] for o in free]
    for p, o, s in zip(prompts, free, stops):
        cut = greedy_generate(model, smol_tokenizer, [p], 16, stop=[s], batch_size=1)[0]
        assert cut == o[:o.find(s)]
        assert s not in cut


def test_eos_ends_generation(smol_tokenizer):
    model = tiny_model("llama", seed=1)
    with torch.no_grad():  # make EOS the argmax everywhere
        model.lm_head.weight.zero_()
        model.lm_head.weight[smol_tokenizer.eos_token_id] = 1.0
        model.model.norm.weight.fill_(1.0)
    out = greedy_generate(model, smol_tokenizer, rendered(smol_tokenizer)[:2], 8, batch_size=2)
    assert out == ["", ""]


def test_truncate_at_stop_takes_earliest():
    assert truncate_at_stop("abc\ndef x\nclass y", ["\nclass", "\ndef"]) == "abc"
    assert truncate_at_stop("abc", ["zz"]) == "abc"


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_rows_that_stop_early_leave_the_others_unchanged(arch, smol_tokenizer):
    # finished rows are dropped from the batch and its cache (sliding-window layers included)
    model = tiny_model(arch, seed=2)
    prompts = rendered(smol_tokenizer)
    free = [greedy_generate(model, smol_tokenizer, [p], 20, batch_size=1)[0] for p in prompts]
    stop = [free[0][3:12]]  # ends the first prompt's row after a few tokens, the others run on
    one = [greedy_generate(model, smol_tokenizer, [p], 20, stop=stop, batch_size=1)[0] for p in prompts]
    many = greedy_generate(model, smol_tokenizer, prompts, 20, stop=stop, batch_size=4)
    assert many == one
    assert len(one[0]) < len(free[0]) and any(o == f and len(o) > 5 for o, f in zip(one[1:], free[1:]))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_answers_scored_on_the_prompt_pass_match_the_standalone_teacher_forcing(arch, smol_tokenizer, monkeypatch):
    from harness.eval import generation
    from harness.eval.fidelity import answer_logprobs

    # a small chunk makes the long answer span several teacher-forced forwards, and the rows of one
    # batch are forced in two groups; the gemma3 prompts run
    # past its 64-token sliding window, so the copied cache must roll that window too
    monkeypatch.setattr(generation, "ANSWER_CHUNK", 5)
    monkeypatch.setattr(generation, "FORCED_ROWS", 2)  # a batch of 3 is forced as rows [0, 1] and [2]
    model = tiny_model(arch, seed=3, num_hidden_layers=6)  # gemma3: sliding and global layers
    prompts = rendered(smol_tokenizer)
    answers = ["Paris.", "def add(a, b):\n    return a + b\n" * 3, "x", "Red, green and blue, said twice: red, green, blue."]
    got = {}
    out = greedy_generate(model, smol_tokenizer, prompts, 6, batch_size=3, answers=answers,
                          on_answer=lambda i, lp, target: got.setdefault(i, (lp, target)))
    assert out == greedy_generate(model, smol_tokenizer, prompts, 6, batch_size=3)
    assert sorted(got) == [0, 1, 2, 3]
    for i, (lp, target) in enumerate(answer_logprobs(model, smol_tokenizer, list(zip(prompts, answers)), batch_size=2)):
        assert torch.equal(got[i][1], target) and got[i][0].shape == lp.shape
        torch.testing.assert_close(got[i][0], lp, atol=2e-4, rtol=0)
    assert len(got[1][1]) > 2 * 5 and len(got[2][1]) == 1
