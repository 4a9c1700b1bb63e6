import json
from types import SimpleNamespace

import pytest
import torch

from harness import calib
from harness.errors import HarnessError


def cfg(**kw):
    base = dict(name="code", path=None, n_samples=4, seqlen=32, seed=0)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("name", calib.SHIPPED)
def test_every_named_set_loads(name, smol_tokenizer):
    c = calib.load(cfg(name=name, n_samples=8), smol_tokenizer)
    assert c.input_ids.shape == (8, 32) and c.input_ids.dtype == torch.long


def test_seed_is_deterministic_and_matters(smol_tokenizer):
    a = calib.load(cfg(seed=1), smol_tokenizer).input_ids
    b = calib.load(cfg(seed=1), smol_tokenizer).input_ids
    c = calib.load(cfg(seed=2), smol_tokenizer).input_ids
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_chat_goes_through_the_chat_template(tmp_path, smol_tokenizer):
    f = tmp_path / "traffic.jsonl"
    convo = {"messages": [{"role": "user", "content": "Convert 10 EUR to USD please. " * 5},
                          {"role": "assistant", "content": '{"name": "convert", "arguments": {"amount": 10}}'}]}
    f.write_text("\n".join(json.dumps(convo) for _ in range(4)))
    c = calib.load(cfg(name="file", path=str(f), n_samples=2, seqlen=16), smol_tokenizer)
    stream = calib.token_stream(calib.read_documents(f, smol_tokenizer), smol_tokenizer)
    im_start = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (stream == im_start).sum() >= 4 * 2
    assert c.input_ids.shape == (2, 16)


def test_bad_files_are_clear_errors(tmp_path, smol_tokenizer):
    with pytest.raises(HarnessError, match="not found"):
        calib.load(cfg(name="file", path=str(tmp_path / "nope.txt")), smol_tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(HarnessError, match=r"bad.jsonl:2: not valid JSON"):
        calib.load(cfg(name="file", path=str(bad)), smol_tokenizer)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(HarnessError, match=r"has 4 bytes, fewer than the 32 tokens of one window \(calib.seqlen\)"):
        calib.load(cfg(name="file", path=str(short)), smol_tokenizer)
    with pytest.raises(HarnessError, match="choose one of: prose, code"):
        calib.load(cfg(name="poetry"), smol_tokenizer)


def test_windows_that_must_repeat_text_are_flagged(smol_tokenizer, capsys):
    stream = calib.token_stream(calib.read_documents(calib.CALIB_DIR / "prose.txt", smol_tokenizer), smol_tokenizer)
    n = stream.numel() // 256 + 2  # more 256-token windows than the text holds
    calib.load(cfg(name="prose", n_samples=n, seqlen=256), smol_tokenizer)
    err = capsys.readouterr().err
    assert f"prose.txt has {stream.numel()} tokens" in err and "windows overlap" in err
    calib.load(cfg(name="prose", n_samples=2, seqlen=256), smol_tokenizer)
    assert "windows overlap" not in capsys.readouterr().err


def test_windows_cover_the_whole_stream():
    """A set made of parts (one language after another) must not be calibrated on a cluster of them."""
    stream = torch.arange(20 * 16)
    for seed in range(5):
        w = calib.sample_windows(stream, 10, 16, torch.Generator().manual_seed(seed))
        slots = (w[:, 0] // 32).tolist()  # which of ten 32-token parts each window starts in
        assert slots == list(range(10))
        assert (w[:, 0] % 16 == 0).all() and w[:, 0].unique().numel() == 10  # whole, distinct slots
