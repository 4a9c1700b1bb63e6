import pytest
import torch

import methods
from harness.checks import check_export, check_method
from harness.errors import HarnessError
from kernels.pack import PackError, pack_awq, unpack_awq
from methods.hqq import hqq_qparams, shrink_lp
from methods.quantizer import QuantizedWeight, QuantSpec, dequantize, fake_quantize, integral, quantize
from methods.targets import target_linears
from tests.conftest import tiny_model
from tests.methods.helpers import method_cfg

SPEC = QuantSpec(4, 32)


def heavy_tailed(out_f=64, in_f=256, seed=0):
    """Laplace-like weights with a few outliers per row, as in trained LLM Linears."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.distributions.Laplace(0.0, 0.02).sample((out_f, in_f))
    idx = torch.randint(0, in_f, (out_f, 2), generator=gen)
    w.scatter_(1, idx, 0.3 * torch.sign(torch.randn(out_f, 2, generator=gen)))
    return w


@pytest.mark.parametrize("bits", [4, 3])
def test_hqq_beats_rtn_on_weight_mse(bits):
    torch.manual_seed(0)
    w = heavy_tailed()
    spec = QuantSpec(bits, 32)
    scale, zero = hqq_qparams(w, spec)
    hqq = dequantize(quantize(w, scale, zero, spec), scale, zero, spec)
    rtn = fake_quantize(w, spec)
    assert (hqq - w).pow(2).mean() < 0.97 * (rtn - w).pow(2).mean()
    assert not integral(zero)  # the optimised zero points are fractional


def test_hqq_round_trips_through_the_one_quantizer():
    torch.manual_seed(1)
    w = heavy_tailed(seed=1)
    scale, zero = hqq_qparams(w, SPEC)
    qw = QuantizedWeight(quantize(w, scale, zero, SPEC), scale, zero, SPEC)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= SPEC.maxq
    # dequantize -> quantize with the same parameters gives the same codes
    assert torch.equal(quantize(qw.dequantize(), scale, zero, SPEC), qw.codes)


def test_fractional_zeros_are_refused_by_the_packing_and_rounded_ones_pack():
    torch.manual_seed(2)
    w = heavy_tailed(seed=2)
    scale, zero = hqq_qparams(w, SPEC)
    with pytest.raises(PackError, match="zero points must be integers"):
        pack_awq(QuantizedWeight(quantize(w, scale, zero, SPEC), scale, zero, SPEC))
    zi = zero.round().clamp(0, SPEC.maxq)
    qw = QuantizedWeight(quantize(w, scale, zi, SPEC), scale, zi, SPEC)
    back = unpack_awq(*pack_awq(qw), group_size=32)
    assert torch.equal(back.codes, qw.codes) and torch.equal(back.zero, qw.zero)


def test_integer_zeros_keep_the_existing_rounding():
    w = torch.randn(8, 64)
    rtn = fake_quantize(w, SPEC)
    from methods.quantizer import compute_qparams
    s, z = compute_qparams(w, SPEC)
    legacy = ((torch.round(w.view(8, 2, 32) / s.unsqueeze(-1)) + z.unsqueeze(-1)).clamp(0, 15) - z.unsqueeze(-1)) * s.unsqueeze(-1)
    assert torch.equal(rtn, legacy.view(8, 64))


def test_shrink_lp_thresholds_small_values_and_keeps_signs():
    x = torch.tensor([-2.0, -0.01, 0.0, 0.01, 2.0])
    y = shrink_lp(x, beta=10.0, p=0.7)
    assert y[1] == 0 and y[2] == 0 and y[3] == 0
    assert y[0] < 0 < y[4] and abs(y[4]) < 2.0


def test_hqq_method_quantizes_every_target_without_calibration():
    model = tiny_model("qwen2", vocab_size=256)
    res = methods.get("hqq").quantize(model, None, method_cfg("hqq"))
    assert set(res.qweights) == set(target_linears(model))
    for name, lin in target_linears(model).items():
        torch.testing.assert_close(lin.weight, res.qweights[name].dequantize(), rtol=0, atol=0)
    assert methods.entry("hqq").calibrated is False


def test_hqq_settings_fail_before_loading(tmp_path):
    from omegaconf import OmegaConf

    with pytest.raises(HarnessError, match="asymmetric"):
        check_method(method_cfg("hqq", symmetric=True))
    export = OmegaConf.create({"dir": str(tmp_path / "out"), "format": "awq", "dtype": "fp16"})
    with pytest.raises(HarnessError, match="round_zero=true"):
        check_export(export, method_cfg("hqq", group_size=64))
    check_export(export, method_cfg("hqq", group_size=64, round_zero=True))
