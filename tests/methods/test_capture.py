import pytest
import torch

from methods.capture import GRAM_BLOCKS, InputStats, LayerwiseRunner, forward_dtype, layer_linears
from methods.mappings import mapping_for
from tests.conftest import tiny_model
from tests.methods.helpers import random_calib

ARCHS = ["llama", "qwen2", "qwen3", "gemma3_text"]


def _model(arch):
    # Gemma 3 alternates sliding and full attention: the cached kwargs (masks, rotary tables) differ per layer
    kw = dict(layer_types=["sliding_attention", "full_attention"], sliding_window=16) if arch == "gemma3_text" else {}
    return tiny_model(arch, vocab_size=256, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_layerwise_walk_reproduces_the_models_hidden_states(arch):
    model = _model(arch)
    calib = random_calib(n=5, seqlen=40)
    with torch.no_grad():
        ref = model(calib.input_ids, output_hidden_states=True).hidden_states
    runner = LayerwiseRunner(model, mapping_for(model), calib.input_ids, batch_size=2)  # 2 does not divide 5
    assert len(runner.hidden) == 3
    for i in range(len(runner.layers)):
        torch.testing.assert_close(torch.cat(runner.hidden), ref[i], rtol=1e-5, atol=1e-5)
        runner.advance(i)
    final = model.model.norm(torch.cat(runner.hidden))
    torch.testing.assert_close(final, ref[-1], rtol=1e-5, atol=1e-5)


def test_collect_stats_matches_hooked_inputs_and_shares_stats_within_an_input_set():
    model = _model("llama")
    mapping = mapping_for(model)
    calib = random_calib(n=3, seqlen=16)
    runner = LayerwiseRunner(model, mapping, calib.input_ids, batch_size=2)
    layer = runner.layers[0]
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1])))
             for n, m in layer_linears(layer).items()]
    hidden_before = [h.clone() for h in runner.hidden]
    stats = runner.collect_stats(0, layer_linears(layer), mapping, also_advance=True)
    for h in hooks:
        h.remove()
    assert stats["self_attn.q_proj"] is stats["self_attn.k_proj"] is stats["self_attn.v_proj"]
    assert stats["mlp.gate_proj"] is stats["mlp.up_proj"]
    assert stats["self_attn.o_proj"] is not stats["mlp.down_proj"]
    for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"):
        x = torch.cat(seen[name])
        assert stats[name].tokens == 3 * 16
        torch.testing.assert_close(stats[name].gram, x.T @ x, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stats[name].mean_abs, x.abs().mean(0))
    # also_advance moved the hidden states on by exactly one layer
    with torch.no_grad():
        expect = [layer(h, **kw)[0] if isinstance(layer(h, **kw), tuple) else layer(h, **kw)
                  for h, kw in zip(hidden_before, runner.kwargs[0])]
    torch.testing.assert_close(torch.cat(runner.hidden), torch.cat(expect))


@pytest.mark.parametrize("arch", ARCHS)
def test_statistics_without_advancing_stop_the_layer_early_and_match(arch):
    """Without ``also_advance`` the pass stops once the last input set is recorded (GPTQ's statistics
    pass never needs the layer's output): same statistics, hidden states untouched, and the rest of
    the layer (the last Linear at least) never runs."""
    model = _model(arch)
    mapping = mapping_for(model)
    calib = random_calib(n=3, seqlen=16)
    runner = LayerwiseRunner(model, mapping, calib.input_ids, batch_size=2)
    layer = runner.layers[0]
    last = list(layer_linears(layer).values())[-1]
    calls = []
    hook = last.register_forward_hook(lambda m, a, o: calls.append(1))
    hidden_before = [h.clone() for h in runner.hidden]
    early = runner.collect_stats(0, layer_linears(layer), mapping)
    assert not calls
    assert all(torch.equal(a, b) for a, b in zip(runner.hidden, hidden_before))
    full = runner.collect_stats(0, layer_linears(layer), mapping, also_advance=True)
    hook.remove()
    assert len(calls) == 2  # two batches
    assert early.keys() == full.keys()
    for name in early:
        assert early[name].tokens == full[name].tokens == 3 * 16
        assert torch.equal(early[name].gram, full[name].gram)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_calibration_passes_run_in_the_forward_dtype_on_fp32_master_weights(arch):
    model = _model(arch)
    mapping = mapping_for(model)
    calib = random_calib(n=3, seqlen=16)
    masters = {k: v.clone() for k, v in model.state_dict().items()}
    runner32 = LayerwiseRunner(model, mapping, calib.input_ids, batch_size=2)
    ref = runner32.collect_stats(0, layer_linears(runner32.layers[0]), mapping, also_advance=True)
    out_dtypes = []
    hook = runner32.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, o: out_dtypes.append(o.dtype))
    with forward_dtype(torch.bfloat16):
        runner = LayerwiseRunner(model, mapping, calib.input_ids, batch_size=2)
        stats = runner.collect_stats(0, layer_linears(runner.layers[0]), mapping, also_advance=True)
    runner.collect_stats(0, layer_linears(runner.layers[0]), mapping)  # outside: fp32 again
    hook.remove()
    assert out_dtypes[:2] == [torch.bfloat16] * 2 and out_dtypes[2:] == []  # the early stop skips down_proj
    assert all(torch.equal(v, masters[k]) and v.dtype == masters[k].dtype for k, v in model.state_dict().items())
    for name in stats:
        assert stats[name].gram.dtype == torch.float32
        torch.testing.assert_close(stats[name].gram, ref[name].gram, rtol=0.05, atol=0.05 * ref[name].gram.abs().max().item())
    assert not torch.equal(stats["mlp.down_proj"].gram, ref["mlp.down_proj"].gram)  # bf16 really ran


def test_input_stats_accumulate_over_calls():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 8, generator=gen), torch.randn(7, 8, generator=gen)
    st = InputStats.empty(8)
    st.add(a)
    st.add(b)
    x = torch.cat([a.reshape(-1, 8), b])
    assert st.tokens == 17
    torch.testing.assert_close(st.gram, x.T @ x)
    torch.testing.assert_close(st.mean_abs, x.abs().mean(0))


def test_blocked_gram_is_the_full_symmetric_product_and_in_place_changes_stick():
    gen = torch.Generator().manual_seed(1)
    width = 64 * GRAM_BLOCKS + 13  # wide enough for the blocked path, blocks of unequal width
    xs = [torch.randn(40, width, generator=gen) for _ in range(3)]
    st = InputStats.empty(width)
    st.add(xs[0])
    torch.testing.assert_close(st.gram, xs[0].T @ xs[0], rtol=1e-5, atol=1e-4)
    st.gram.mul_(2.0)  # a read returns the stored tensor: the change is kept
    st.add(xs[1])
    st.add(xs[2])
    expect = 2 * xs[0].T @ xs[0] + xs[1].T @ xs[1] + xs[2].T @ xs[2]
    torch.testing.assert_close(st.gram, expect, rtol=1e-5, atol=1e-4)
    assert torch.equal(st.gram, st.gram.T)


def test_the_model_is_left_intact_after_recording():
    model = _model("qwen3")
    calib = random_calib(n=2, seqlen=8)
    with torch.no_grad():
        ref = model(calib.input_ids).logits
    runner = LayerwiseRunner(model, mapping_for(model), calib.input_ids)
    assert all(type(layer).__name__.endswith("DecoderLayer") for layer in runner.layers)
    with torch.no_grad():
        torch.testing.assert_close(model(calib.input_ids).logits, ref)
