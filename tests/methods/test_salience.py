"""Salient-channel protection: channel choice, exact restoration, the Gram error, the toy example."""
import pytest
import torch

import methods
from methods.capture import InputStats
from methods.quantizer import QuantSpec, fake_quantize
from methods.salience import (SELECTORS, SalienceError, check_choice, collect_input_stats, kept_count,
                              protect_salient, quantize_keeping, relative_output_error, select_channels,
                              toy_contributions, toy_two_channel)
from methods.targets import target_linears
from tests.conftest import tiny_model

SPEC = QuantSpec(3, 32, False)


def planted_linear(seed=0, out_f=64, in_f=128, tokens=512):
    """Inputs whose channels 0..7 are 25× larger than the rest; weight columns 4..11 are 3× larger,
    so weight magnitude finds half of the salient channels and misses the other half."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, in_f, generator=g)
    x[:, :8] *= 25
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    w[:, 4:12] *= 3
    st = InputStats.empty(in_f)
    st.add(x)
    return w, x, st


def output_error(w, x, keep):
    wq = quantize_keeping(w, SPEC, keep)
    return ((x @ (wq - w).T) ** 2).sum().item()


def test_toy_two_channel_activation_channel_is_the_one_to_keep():
    assert toy_contributions() == pytest.approx((4.0, 0.6))
    for bits, sym in ((3, False), (4, False), (3, True), (4, True)):
        none, act, weight = toy_two_channel(bits, sym)
        assert act["abs_err"] == pytest.approx(0.0, abs=1e-6)
        assert none["abs_err"] > 0.1
        assert weight["abs_err"] == pytest.approx(none["abs_err"])  # the largest weight is on the grid anyway
        assert none["y"] == pytest.approx(4.6)


def test_kept_columns_are_exact_and_the_rest_is_plain_rtn():
    w, _, _ = planted_linear()
    keep = torch.tensor([0, 5, 77])
    wq = quantize_keeping(w, SPEC, keep)
    assert torch.equal(wq[:, keep], w[:, keep])
    rest = torch.ones(w.shape[1], dtype=torch.bool)
    rest[keep] = False
    assert torch.equal(wq[:, rest], fake_quantize(w, SPEC)[:, rest])
    assert torch.equal(quantize_keeping(w, SPEC, None), fake_quantize(w, SPEC))


def test_selectors_pick_the_planted_channels():
    w, _, st = planted_linear()
    assert select_channels("activation", 8 / 128, w, st.mean_abs).tolist() == list(range(8))
    assert select_channels("weight", 8 / 128, w, st.mean_abs).tolist() == list(range(4, 12))
    r1 = select_channels("random", 8 / 128, w, None, torch.Generator().manual_seed(1))
    r1_again = select_channels("random", 8 / 128, w, None, torch.Generator().manual_seed(1))
    r2 = select_channels("random", 8 / 128, w, None, torch.Generator().manual_seed(2))
    assert torch.equal(r1, r1_again) and not torch.equal(r1, r2) and r1.numel() == 8


def test_kept_count_never_rounds_to_zero():
    assert kept_count(576, 0.001) == 1
    assert kept_count(1536, 0.001) == 2
    assert kept_count(576, 0.03) == 17


def test_gram_error_equals_direct_output_error():
    w, x, st = planted_linear()
    wq = quantize_keeping(w, SPEC, torch.tensor([3, 9]))
    direct = ((x @ (wq - w).T) ** 2).sum() / ((x @ w.T) ** 2).sum()
    assert relative_output_error(w, wq, st) == pytest.approx(direct.item(), rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_outliers_rank_activation_over_weight_over_random(seed):
    w, x, st = planted_linear(seed)
    f = 8 / 128
    err = {s: output_error(w, x, select_channels(s, f, w, st.mean_abs, torch.Generator().manual_seed(seed)))
           for s in SELECTORS}
    rtn = output_error(w, x, None)
    assert err["activation"] < err["weight"] < err["random"] <= rtn
    assert err["activation"] < 0.1 * rtn  # keeping 6% of the channels removes most of the error


@pytest.mark.parametrize("selector, fraction, needle", [
    ("activations", 0.01, "unknown channel selector 'activations'; choose from: activation, weight, random"),
    ("weight", 0.0, "out of range"),
    ("weight", 1.0, "out of range"),
    ("random", -0.1, "out of range"),
])
def test_bad_choices_name_the_valid_ones(selector, fraction, needle):
    with pytest.raises(SalienceError, match=needle):
        check_choice(selector, fraction)


def test_protect_salient_on_a_model_keeps_channels_and_matches_rtn_when_keeping_none():
    model = tiny_model("llama")
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    stats = collect_input_stats(model, ids, batch_size=2)
    linears = target_linears(model)
    assert set(stats) == set(linears)
    original = {n: m.weight.detach().clone() for n, m in linears.items()}

    energy = {}
    cached_first = protect_salient(linears, stats, SPEC, "random", 0.05, seed=4, energy=energy)
    assert set(energy) == set(linears)
    for name, lin in linears.items():
        lin.weight.data.copy_(original[name])
    cached = protect_salient(linears, stats, SPEC, "random", 0.05, seed=4, energy=energy)
    for name, lin in linears.items():
        lin.weight.data.copy_(original[name])
    assert [x["rel_err"] for x in cached] == pytest.approx([x["rel_err"] for x in cached_first], rel=1e-6)

    layers = protect_salient(linears, stats, SPEC, "activation", 0.05)
    for name, lin in linears.items():
        keep = select_channels("activation", 0.05, original[name], stats[name].mean_abs)
        assert torch.equal(lin.weight[:, keep], original[name][:, keep])
        assert not torch.equal(lin.weight, original[name])
    assert all(x["kept"] == kept_count(linears[x["layer"]].in_features, 0.05) for x in layers)

    for name, lin in linears.items():
        lin.weight.data.copy_(original[name])
    rtn_model = tiny_model("llama")
    methods.get("rtn").quantize(rtn_model, None, type("C", (), dict(bits=3, group_size=32, symmetric=False,
                                                                    quantize_lm_head=False))())
    protect_salient(linears, stats, SPEC, None)
    rtn_linears = target_linears(rtn_model)
    for name, lin in linears.items():
        assert torch.equal(lin.weight, rtn_linears[name].weight)
