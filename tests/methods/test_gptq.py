import pytest
import torch

import methods
from kernels.pack import pack_awq, unpack_awq
from methods.gptq import ORDERS, column_order, _block_size, gptq_quantize
from methods.quantizer import (PER_CHANNEL, Bounds, QuantSpec, clip_of, clip_ratio, compute_qparams, fake_quantize,
                               group_minmax, quantize)
from methods.targets import target_linears
from tests.conftest import tiny_model
from tests.methods.helpers import method_cfg, random_calib
from tests.methods.test_awq_gptq import _logit_error

ARCHS = ["llama", "qwen2", "qwen3", "gemma3_text"]


def correlated_inputs(tokens=1024, in_f=128, seed=0):
    """Inputs with correlated channels and uneven magnitudes, like a transformer's hidden states."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(in_f, in_f, generator=gen) / in_f**0.5 + torch.eye(in_f)
    x = torch.randn(tokens, in_f, generator=gen) @ mix
    return x * torch.exp(torch.randn(in_f, generator=gen))


def layer_error(x, w, wq):
    return (x @ (wq - w).T).pow(2).sum().item()


@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(3, 32), QuantSpec(4, PER_CHANNEL), QuantSpec(4, 32, True)],
                         ids=["w4g32", "w3g32", "w4-channel", "w4g32-sym"])
@pytest.mark.parametrize("act_order", ORDERS)
def test_gptq_reconstructs_its_calibration_outputs_better_than_rtn(spec, act_order):
    x = correlated_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    H = 2 / x.shape[0] * x.T @ x
    qw, loss = gptq_quantize(w, H, spec, block_size=32, act_order=act_order)
    gptq_err = layer_error(x, w, qw.dequantize())
    rtn_err = layer_error(x, w, fake_quantize(w, spec))
    assert gptq_err < 0.8 * rtn_err
    assert loss > 0


def test_act_order_helps_when_channel_importance_is_uneven():
    x = correlated_inputs(seed=4)
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(5)) * 0.05
    H = 2 / x.shape[0] * x.T @ x
    spec = QuantSpec(3, 32)
    plain = layer_error(x, w, gptq_quantize(w, H, spec, act_order="off")[0].dequantize())
    for mode in ("static", "group"):
        assert layer_error(x, w, gptq_quantize(w, H, spec, act_order=mode)[0].dequantize()) < plain, mode


def test_act_order_uses_static_contiguous_groups_that_round_trip_and_pack():
    x = correlated_inputs(seed=2)
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3)) * 0.05
    spec = QuantSpec(4, 32)
    H = 2 / x.shape[0] * x.T @ x
    assert not torch.equal(torch.argsort(torch.diag(H), descending=True), torch.arange(128))  # a real permutation
    qw, _ = gptq_quantize(w, H, spec, block_size=16, act_order="static")
    # static groups: parameters come from the original weights, one per contiguous input group
    scale, zero = compute_qparams(w, spec)
    assert torch.equal(qw.scale, scale) and torch.equal(qw.zero, zero)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= spec.maxq
    # codes -> dequantize -> requantize with the same group parameters gives the same codes
    deq = qw.dequantize()
    assert torch.equal(quantize(deq, qw.scale, qw.zero, spec), qw.codes)
    # every value in contiguous group j lies on group j's grid: packable without a g_idx
    grid = (deq.view(64, 4, 32) / qw.scale.unsqueeze(-1) + qw.zero.unsqueeze(-1))
    torch.testing.assert_close(grid, grid.round(), rtol=0, atol=1e-4)
    back = unpack_awq(*pack_awq(qw), group_size=32)
    assert torch.equal(back.codes, qw.codes) and torch.equal(back.zero, qw.zero)
    torch.testing.assert_close(back.scale, qw.scale, rtol=1e-3, atol=0)  # scales are stored as fp16


@pytest.mark.parametrize("requested,group,expected", [(128, 32, 128), (100, 32, 96), (16, 64, 16), (48, 64, 64)])
def test_block_boundaries_line_up_with_groups(requested, group, expected):
    assert _block_size(requested, group) == expected


def test_block_size_does_not_change_the_result_when_groups_align():
    x = correlated_inputs(seed=6)
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(7)) * 0.05
    H = 2 / x.shape[0] * x.T @ x
    a, _ = gptq_quantize(w, H, QuantSpec(4, 32), block_size=32)
    b, _ = gptq_quantize(w, H, QuantSpec(4, 32), block_size=128)
    assert (a.codes != b.codes).float().mean() < 0.01  # same algorithm, different float summation order
    torch.testing.assert_close(a.scale, b.scale, rtol=1e-4, atol=1e-6)


def test_dead_input_channels_are_zeroed_not_nan():
    x = correlated_inputs(tokens=256, in_f=64, seed=8)
    x[:, 10] = 0
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(9))
    qw, loss = gptq_quantize(w, 2 / 256 * x.T @ x, QuantSpec(4, 16))
    deq = qw.dequantize()
    assert bool(deq.isfinite().all()) and loss == loss
    assert deq[:, 10].abs().max() <= qw.scale[:, 0].max()  # the dead column quantizes to (about) zero


@pytest.mark.parametrize("arch,act_order", list(zip(ARCHS, ["off", "static", "group", "static"])))
def test_gptq_end_to_end_quantizes_every_target(arch, act_order):
    model = tiny_model(arch, vocab_size=256)
    calib = random_calib()
    res = methods.get("gptq").quantize(model, calib, method_cfg("gptq", act_order=act_order, block_size=32))
    targets = target_linears(model)
    assert set(res.qweights) == set(targets)
    for name, lin in targets.items():
        assert torch.equal(lin.weight, res.qweights[name].dequantize())
    with torch.no_grad():
        assert bool(model(calib.input_ids).logits.isfinite().all())
    assert all(s["gptq_loss"] >= 0 for s in res.layers)


def test_gptq_beats_rtn_on_a_tiny_model_output():
    def logit_mse(name):
        model = tiny_model("qwen3", vocab_size=256, hidden_size=128, intermediate_size=256, head_dim=32)
        ids = random_calib(n=4, seqlen=64, seed=1).input_ids
        with torch.no_grad():
            ref = model(ids).logits
        methods.get(name).quantize(model, random_calib(n=8, seqlen=64), method_cfg(name, bits=3))
        with torch.no_grad():
            return (model(ids).logits - ref).pow(2).mean().item()

    assert logit_mse("gptq") < logit_mse("rtn")


@pytest.mark.parametrize("act_order", ORDERS)
def test_stacked_rows_quantize_like_separate_calls(act_order):
    """GPTQ.quantize stacks Linears that share an input (q/k/v, gate/up) into one call: rows are
    independent given the Hessian, so each part must match quantizing that Linear alone."""
    x = correlated_inputs(tokens=512, in_f=64)
    H = 2 / 512 * x.T @ x
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(24, 64, generator=gen), torch.randn(8, 64, generator=gen)
    spec = QuantSpec(4, 16)
    both, _ = gptq_quantize(torch.cat([a, b]), H, spec, block_size=32, act_order=act_order)
    for part, (start, stop) in ((a, (0, 24)), (b, (24, 32))):
        alone, _ = gptq_quantize(part, H, spec, block_size=32, act_order=act_order)
        rows = both.rows(start, stop)
        assert (rows.codes != alone.codes).float().mean() < 0.002  # BLAS blocking may flip a rare tie
        torch.testing.assert_close(rows.scale, alone.scale)


def test_group_aware_order_keeps_groups_together_most_important_first():
    diag = torch.tensor([1.0, 9.0, 2.0, 3.0, 0.5, 0.1, 8.0, 7.0])
    perm = column_order(diag, "group", 4)
    # group 1 (sum 15.6) before group 0 (sum 15), each group's columns by decreasing diagonal
    assert perm.tolist() == [6, 7, 4, 5, 1, 3, 2, 0]
    assert column_order(diag, "off", 4).tolist() == list(range(8))
    assert column_order(diag, "static", 4).tolist() == torch.argsort(diag, descending=True).tolist()
    with pytest.raises(ValueError, match="choose one of: static, off, group"):
        column_order(diag, "desc", 4)


def test_group_aware_order_packs_without_g_idx_and_uses_updated_group_params():
    x = correlated_inputs(seed=2)
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3)) * 0.05
    spec = QuantSpec(4, 32)
    H = 2 / x.shape[0] * x.T @ x
    qw, _ = gptq_quantize(w, H, spec, block_size=16, act_order="group")
    scale, _ = compute_qparams(w, spec)
    assert not torch.equal(qw.scale, scale)  # later groups' parameters come from error-updated weights
    back = unpack_awq(*pack_awq(qw), group_size=32)
    assert torch.equal(back.codes, qw.codes) and torch.equal(back.zero, qw.zero)


def test_clip_ratio_narrows_every_group_range():
    x = correlated_inputs(in_f=64, seed=8)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(9)) * 0.05
    spec = QuantSpec(4, 32)
    H = 2 / x.shape[0] * x.T @ x
    ratio = torch.full((16, 2), 0.8)
    full, _ = gptq_quantize(w, H, spec, act_order="static")
    clipped, _ = gptq_quantize(w, H, spec, act_order="static", clip_ratio=ratio)
    torch.testing.assert_close(clipped.scale, compute_qparams(w, spec, 0.8 * w.view(16, 2, 32).abs().amax(-1))[0])
    for mode in ("off", "group"):  # ranges of error-updated weights: narrower on average
        full, _ = gptq_quantize(w, H, spec, act_order=mode)
        clipped, _ = gptq_quantize(w, H, spec, act_order=mode, clip_ratio=ratio)
        assert clipped.scale.mean() < 0.9 * full.scale.mean(), mode


def test_two_sided_clip_ratios_bound_each_side_of_every_group():
    x = correlated_inputs(in_f=64, seed=8)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(9)) * 0.05
    spec = QuantSpec(4, 32)
    H = 2 / x.shape[0] * x.T @ x
    ratio = Bounds(torch.full((16, 2), 1.0), torch.full((16, 2), 0.6))  # the max side only
    lo, hi = group_minmax(w, spec)
    clipped, _ = gptq_quantize(w, H, spec, act_order="static", clip_ratio=ratio)
    torch.testing.assert_close(clipped.scale, compute_qparams(w, spec, Bounds(lo, 0.6 * hi))[0])
    torch.testing.assert_close(clip_ratio(Bounds(0.5 * lo, 0.6 * hi), w, spec), Bounds(torch.full_like(lo, 0.5),
                                                                                         torch.full_like(hi, 0.6)))
    clip = Bounds(0.5 * lo, 0.6 * hi)
    torch.testing.assert_close(clip_of(clip_ratio(clip, w, spec), w, spec), clip)
    off, _ = gptq_quantize(w, H, spec, act_order="off", clip_ratio=ratio)
    assert off.scale.mean() < gptq_quantize(w, H, spec, act_order="off")[0].scale.mean()


def test_gptq_ranges_from_the_clip_search_lower_the_output_error():
    searched = _logit_error("gptq", block_size=32)  # clip=true, the default
    min_max = _logit_error("gptq", block_size=32, clip=False)
    assert searched < min_max, (searched, min_max)
