import pytest
import torch

from methods.quantizer import (
    PER_CHANNEL, QuantizedWeight, QuantSpec, QuantSpecError, compute_qparams, dequantize, fake_quantize, quantize,
)

SPECS = [QuantSpec(b, g, s) for b in (2, 3, 4, 8) for g in (16, PER_CHANNEL) for s in (False, True)]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_representable_weights_round_trip_exactly(spec):
    gen = torch.Generator().manual_seed(0)
    out, inp = 8, 64
    n_groups = inp // spec.group_len(inp)
    scale = torch.rand(out, n_groups, generator=gen) * 0.1 + 0.01
    if spec.symmetric:
        zero = torch.full((out, n_groups), float(2 ** (spec.bits - 1)))
        codes = torch.randint(1, spec.maxq + 1, (out, inp), generator=gen)
    else:
        zero = torch.randint(0, spec.maxq + 1, (out, n_groups), generator=gen).float()
        codes = torch.randint(0, spec.maxq + 1, (out, inp), generator=gen)
    # each group spans its whole code range so that min/max reproduce the same scale and zero
    g = spec.group_len(inp)
    grouped = codes.view(out, n_groups, g)
    if spec.symmetric:
        grouped[..., 0] = 1
        grouped[..., 1] = spec.maxq
    else:
        grouped[..., 0] = 0
        grouped[..., 1] = spec.maxq
        grouped[..., 2] = zero.long()
    w = dequantize(codes.to(torch.uint8), scale, zero, spec)
    qw = QuantizedWeight.from_weight(w, spec)
    assert torch.equal(qw.codes, codes.to(torch.uint8))
    assert torch.allclose(qw.scale, scale, rtol=1e-6, atol=0)
    assert torch.equal(qw.zero, zero)
    assert torch.allclose(qw.dequantize(), w, rtol=1e-6, atol=1e-7)
    assert torch.equal(fake_quantize(w, spec), qw.dequantize())


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_error_is_at_most_half_a_step_and_codes_in_range(spec):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1)) * 0.05
    scale, zero = compute_qparams(w, spec)
    q = quantize(w, scale, zero, spec)
    assert int(q.max()) <= spec.maxq and int(q.min()) >= 0
    assert torch.equal(zero, zero.round()) and float(zero.min()) >= 0 and float(zero.max()) <= spec.maxq
    err = (fake_quantize(w, spec) - w).abs().view(16, scale.shape[1], -1)
    assert (err <= scale.unsqueeze(-1) / 2 + 1e-7).all()


def test_more_bits_and_smaller_groups_give_lower_error():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    mse = lambda s: (fake_quantize(w, s) - w).pow(2).mean().item()  # noqa: E731
    assert mse(QuantSpec(8, 64)) < mse(QuantSpec(4, 64)) < mse(QuantSpec(3, 64)) < mse(QuantSpec(2, 64))
    assert mse(QuantSpec(4, 32)) < mse(QuantSpec(4, 128)) < mse(QuantSpec(4, PER_CHANNEL))


def test_batched_leading_dims_match_one_at_a_time():
    w = torch.randn(3, 8, 64)
    spec = QuantSpec(4, 32)
    batched = fake_quantize(w, spec)
    for i in range(3):
        assert torch.equal(batched[i], fake_quantize(w[i], spec))


@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(3, 16, True)], ids=str)
def test_in_place_fake_quantize_gives_the_same_values(spec):
    w = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(2))
    clip = compute_qparams(w, spec)[0] * 5  # a clip that binds in some groups
    expect = fake_quantize(w, spec, clip)
    buf = w.clone()
    assert fake_quantize(buf, spec, clip, inplace=True).data_ptr() == buf.data_ptr()
    assert torch.equal(buf, expect)
    with pytest.raises(ValueError, match="contiguous float32"):
        fake_quantize(w.transpose(1, 2).contiguous().transpose(1, 2), spec, inplace=True)


def test_clip_shrinks_range():
    w = torch.randn(4, 64)
    spec = QuantSpec(4, 64)
    full, _ = compute_qparams(w, spec)
    clip = w.abs().amax(dim=-1, keepdim=True) * 0.5
    clipped, _ = compute_qparams(w, spec, clip)
    assert (clipped < full).all()


def test_constant_and_zero_groups_are_finite():
    for w in (torch.zeros(2, 64), torch.full((2, 64), 0.3), torch.full((2, 64), -2.0)):
        for sym in (False, True):
            out = fake_quantize(w, QuantSpec(4, 32, sym))
            assert torch.isfinite(out).all()
            assert torch.allclose(out, w, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(bits=1), dict(bits=9), dict(group_size=0), dict(group_size=-5)])
def test_invalid_specs_are_rejected(bad):
    with pytest.raises(QuantSpecError):
        QuantSpec(**bad)


def test_group_size_that_does_not_divide_names_valid_sizes():
    with pytest.raises(QuantSpecError, match=r"does not divide in_features=576.*32, 64, 96, 192"):
        fake_quantize(torch.randn(4, 576), QuantSpec(4, 128))
