import pytest
import torch

from kernels.pack import (AWQ_ORDER, PackError, pack_awq, pack_gptq, pack_nibbles, unpack_awq, unpack_gptq,
                          unpack_nibbles)
from methods.quantizer import QuantizedWeight, QuantSpec
from tests.kernels.conftest import random_qweight

SHAPES = [(8, 32, 32), (16, 64, 32), (24, 128, 64), (40, 256, 128), (8, 96, -1)]  # (out, in, group size)


def _random(out_features, in_features, group_size, seed=0):
    g = in_features if group_size == -1 else group_size
    qw = random_qweight(out_features, in_features, g, seed)
    return QuantizedWeight(qw.codes, qw.scale, qw.zero, QuantSpec(4, group_size))


def _assert_same(a: QuantizedWeight, b: QuantizedWeight):
    assert a.codes.dtype == b.codes.dtype == torch.uint8
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.zero, b.zero)
    assert torch.equal(a.scale, b.scale)


def _int32(value: int) -> int:
    """An unsigned 32-bit pattern as the signed int32 torch stores."""
    return value - 2**32 if value >= 2**31 else value


@pytest.mark.parametrize("out_features,in_features,group_size", SHAPES)
def test_awq_round_trip_is_exact(out_features, in_features, group_size):
    qw = _random(out_features, in_features, group_size)
    packed = pack_awq(qw)
    g = in_features if group_size == -1 else group_size
    assert packed.qweight.shape == (in_features, out_features // 8) and packed.qweight.dtype == torch.int32
    assert packed.qzeros.shape == (in_features // g, out_features // 8) and packed.qzeros.dtype == torch.int32
    assert packed.scales.shape == (in_features // g, out_features) and packed.scales.dtype == torch.float16
    _assert_same(unpack_awq(*packed, group_size=g), qw)


@pytest.mark.parametrize("out_features,in_features,group_size", SHAPES)
@pytest.mark.parametrize("zero_format", ["v1", "v2"])
def test_gptq_round_trip_is_exact(out_features, in_features, group_size, zero_format):
    qw = _random(out_features, in_features, group_size, seed=1)
    if zero_format == "v1":  # v1 stores zero - 1 and cannot hold zero = 0
        qw.zero.clamp_(min=1)
    packed = pack_gptq(qw, zero_format)
    g = in_features if group_size == -1 else group_size
    assert packed.qweight.shape == (in_features // 8, out_features)
    assert packed.qzeros.shape == (in_features // g, out_features // 8)
    assert packed.scales.shape == (in_features // g, out_features)
    assert torch.equal(packed.g_idx, torch.arange(in_features, dtype=torch.int32) // g)
    _assert_same(unpack_gptq(*packed, zero_format=zero_format), qw)


def test_round_trip_of_real_quantized_weights_with_outliers():
    """Ragged values: heavy-tailed weights, an all-positive and an all-negative group (zero 0 and 15)."""
    torch.manual_seed(0)
    w = torch.randn(32, 128) * torch.rand(32, 1) * 3
    w[:, :5] *= 40  # outlier input channels
    w[0, :64] = w[0, :64].abs() + 0.1  # zero point 0
    w[1, 64:] = -w[1, 64:].abs() - 0.1  # zero point 15
    qw = QuantizedWeight.from_weight(w, QuantSpec(4, 64))
    qw.scale = qw.scale.half().float()  # checkpoints store fp16 scales
    assert qw.zero[0, 0] == 0 and qw.zero[1, 1] == 15
    _assert_same(unpack_awq(*pack_awq(qw), group_size=64), qw)
    _assert_same(unpack_gptq(*pack_gptq(qw, "v2"), zero_format="v2"), qw)


def test_awq_nibble_order_on_a_hand_built_pack():
    # one input row, 8 output columns holding the codes 0..7: AWQ's packer puts column
    # AWQ_ORDER[k] = 0,2,4,6,1,3,5,7 into bits 4k..4k+3, so the nibbles read (low to high) 0,2,4,6,1,3,5,7
    codes = torch.arange(8, dtype=torch.uint8).reshape(8, 1).repeat(1, 32)  # [out=8, in=32]
    zero = torch.tensor([[15.0], [0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])  # per output column
    qw = QuantizedWeight(codes, torch.ones(8, 1), zero, QuantSpec(4, 32))
    packed = pack_awq(qw)
    assert packed.qweight.shape == (32, 1)
    assert packed.qweight[:, 0].tolist() == [0x75316420] * 32
    # zeros 15,0,1,...,6 in columns 0..7 -> nibbles (low to high) 15,1,3,5,0,2,4,6 -> sign bit clear
    assert packed.qzeros.tolist() == [[0x6420531F]]
    # the high nibble set gives a negative int32: columns 0..7 = 15..8
    high = QuantizedWeight(15 - codes, torch.ones(8, 1), torch.zeros(8, 1), QuantSpec(4, 32))
    assert pack_awq(high).qweight[0, 0].item() == _int32(0x8ACE9BDF)


def test_awq_packing_matches_the_autoawq_loop():
    """The same words as AutoAWQ's packer: ``qweight[:, c] |= w[:, 8c + order[i]] << 4i`` for i in 0..7."""
    qw = random_qweight(32, 64, 32, seed=3)
    intweight = qw.codes.t().to(torch.int64)  # [in, out]
    expected = torch.zeros(64, 4, dtype=torch.int64)
    for i, column in enumerate(AWQ_ORDER):  # 8 nibble positions, each a whole-tensor op
        expected |= intweight[:, column::8] << (4 * i)
    expected = torch.where(expected >= 2**31, expected - 2**32, expected).to(torch.int32)
    assert torch.equal(pack_awq(qw).qweight, expected)


def test_gptq_packs_consecutive_input_rows():
    codes = torch.arange(8, dtype=torch.uint8).repeat(4).reshape(1, 32).repeat(8, 1)  # in index k -> k % 8
    qw = QuantizedWeight(codes, torch.ones(8, 1), torch.full((8, 1), 8.0), QuantSpec(4, 32))
    packed = pack_gptq(qw, "v1")
    assert packed.qweight.tolist() == [[0x76543210] * 8] * 4
    assert packed.qzeros.tolist() == [[0x77777777]]  # v1: zero - 1


def test_nibbles_round_trip_any_order():
    values = torch.randint(0, 16, (3, 5, 64), dtype=torch.uint8)
    for order in (tuple(range(8)), AWQ_ORDER):
        assert torch.equal(unpack_nibbles(pack_nibbles(values, order), order), values)


def test_only_4_bit_is_packed():
    w = torch.randn(8, 32)
    qw = QuantizedWeight.from_weight(w, QuantSpec(3, 32))
    with pytest.raises(PackError, match="only 4-bit"):
        pack_awq(qw)
    with pytest.raises(PackError, match="only 4-bit"):
        pack_gptq(qw)


def test_gptq_v1_rejects_zero_point_zero():
    qw = random_qweight(8, 32, 32)
    qw.zero[0, 0] = 0
    with pytest.raises(PackError, match="zero point 0"):
        pack_gptq(qw, "v1")
    with pytest.raises(PackError, match="zero_format"):
        pack_gptq(qw, "v3")


def test_clear_errors_for_unpackable_inputs():
    with pytest.raises(PackError, match="multiple of 8"):
        pack_awq(random_qweight(12, 32, 32))
    big = random_qweight(8, 32, 32)
    big.scale[0, 0] = 1e6
    with pytest.raises(PackError, match="float16"):
        pack_awq(big)
    packed = pack_awq(random_qweight(16, 64, 32))
    with pytest.raises(PackError, match="does not divide"):
        unpack_awq(*packed, group_size=48)
    with pytest.raises(PackError, match="qzeros has shape"):
        unpack_awq(packed.qweight, packed.qzeros[:1], packed.scales, group_size=32)
    with pytest.raises(PackError, match="int32"):
        unpack_awq(packed.qweight.to(torch.int64), packed.qzeros, packed.scales, group_size=32)


def test_gptq_act_order_is_rejected():
    packed = pack_gptq(random_qweight(8, 64, 32, seed=2), "v2")
    shuffled = packed.g_idx.flip(0).contiguous()
    with pytest.raises(PackError, match="act-order"):
        unpack_gptq(packed.qweight, packed.qzeros, packed.scales, shuffled, zero_format="v2")
