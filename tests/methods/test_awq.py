import logging

import pytest
import torch

import methods
from methods.awq import (candidate_scales, can_fold, factor_loss, fold_scale, gram_factor, proxy_loss, search_clip,
                         search_scale)
from methods.capture import forward_dtype
from methods.capture import InputStats, decoder_layers
from methods.mappings import ArchMapping, mapping_for
from methods.quantizer import (PER_CHANNEL, Bounds, QuantizedWeight, QuantSpec, fake_quantize, group_absmax,
                               group_minmax, range_qparams, rounding_error)
from methods.targets import target_linears
from tests.conftest import tiny_model
from tests.methods.helpers import method_cfg, random_calib

ARCHS = ["llama", "qwen2", "qwen3", "gemma3_text"]
SPEC = QuantSpec(bits=4, group_size=32)
SPEC16 = QuantSpec(bits=4, group_size=16)  # method_cfg's group size


def planted_layer(seed=0, tokens=512, in_f=128, out_f=96, salient=(3, 40, 77, 101)):
    """Inputs whose few salient channels are ~20x larger than the rest (as in LLM activations)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, in_f, generator=gen)
    x[:, list(salient)] *= 20
    w = torch.randn(out_f, in_f, generator=gen) * 0.05
    st = InputStats.empty(in_f)
    st.add(x)
    return x, w, st


def output_mse(x, w, wq):
    return (x @ (wq - w).T).pow(2).mean().item()


def test_gram_proxy_equals_direct_output_error():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 48, generator=gen, dtype=torch.float64)
    E = torch.randn(5, 20, 48, generator=gen, dtype=torch.float64)  # a batch of candidate errors
    direct = (x @ E.transpose(-1, -2)).pow(2).sum(dim=(-1, -2))
    torch.testing.assert_close(proxy_loss(E, x.T @ x), direct, rtol=1e-10, atol=0)
    st = InputStats.empty(48)
    st.add(x.float())  # the float32 Gram the method actually uses
    torch.testing.assert_close(proxy_loss(E.float(), st.gram), direct.float(), rtol=1e-4, atol=0)


def test_factored_proxy_equals_gram_proxy_and_survives_bf16():
    """‖E L‖² with L Lᵀ = G is the proxy; rounded to bf16 it stays close where rounding G itself does
    not: inputs with a large shared mean and errors orthogonal to it (their loss is all in the small
    directions), plus a dead input channel (G singular)."""
    gen = torch.Generator().manual_seed(3)
    mu = torch.full((96,), 30.0, dtype=torch.float64)
    x = mu + torch.randn(2000, 96, generator=gen, dtype=torch.float64)
    x[:, 7] = 0
    E = torch.randn(4, 40, 96, generator=gen, dtype=torch.float64)
    E -= (E @ mu).unsqueeze(-1) * mu / mu.dot(mu)
    G = x.T @ x
    exact = proxy_loss(E.clone(), G)
    L = gram_factor(G.float())
    torch.testing.assert_close(factor_loss(E.float(), L).double(), exact, rtol=1e-3, atol=0)
    rel = lambda loss: ((loss.double() - exact) / exact).abs().max().item()  # noqa: E731
    in_bf16 = rel(factor_loss(E.bfloat16(), L.bfloat16()))
    gram_in_bf16 = rel((E.bfloat16() @ G.bfloat16()).double().mul(E).sum(dim=(-1, -2)))
    assert in_bf16 < 0.05 and gram_in_bf16 > 2 * in_bf16


def test_gram_factor_of_batched_blocks():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 200, 16, generator=gen)
    G = x.transpose(-1, -2) @ x
    L = gram_factor(G)
    torch.testing.assert_close(L @ L.transpose(-1, -2), G, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rounding_error_is_fake_quantize_minus_w(bits, symmetric):
    spec = QuantSpec(bits, PER_CHANNEL, symmetric)
    w = torch.randn(500, 32, generator=torch.Generator().manual_seed(bits))
    w[0] = w[0].abs()  # a group with no negative weight
    minmax = group_minmax(w, spec)
    clip = Bounds(minmax.lo * 0.7, minmax.hi * 0.85)
    scale, zero = range_qparams(minmax, spec, clip)
    err = rounding_error(w, scale, zero, spec, out=torch.empty_like(w))
    assert torch.equal(err, fake_quantize(w, spec, clip) - w)


def test_scale_search_in_bf16_agrees_with_fp32():
    """Under a bf16 calibration dtype the scale search ranks in bf16 (ranking_dtype): same pick here."""
    _, w, st = planted_layer(seed=5)
    _, best32, losses32 = search_scale(w, st, SPEC, n_grid=20)
    with forward_dtype(torch.bfloat16):
        _, best16, losses16 = search_scale(w, st, SPEC, n_grid=20)
    assert best16 == best32
    torch.testing.assert_close(losses16, losses32, rtol=2e-2, atol=0)


def test_scale_search_beats_rtn_on_planted_salient_channels():
    x, w, st = planted_layer()
    scale, best, losses = search_scale(w, st, SPEC, n_grid=20)
    assert best > 0  # α = 0 is plain RTN; the planted channels must pull α up
    awq = fake_quantize(w * scale, SPEC) / scale
    rtn = fake_quantize(w, SPEC)
    assert output_mse(x, w, awq) < 0.7 * output_mse(x, w, rtn)
    # the chosen loss is the proxy of the true output error of the chosen candidate
    assert losses[best] == pytest.approx(output_mse(x, w, awq) * x.shape[0] * w.shape[0], rel=1e-3)
    assert scale[[3, 40, 77, 101]].min() > scale.median() * 2  # salient channels are scaled up


def test_duo_scaling_also_beats_rtn():
    x, w, st = planted_layer(seed=2)
    scale, _, _ = search_scale(w, st, SPEC, n_grid=20, duo=True)
    assert output_mse(x, w, fake_quantize(w * scale, SPEC) / scale) < output_mse(x, w, fake_quantize(w, SPEC))


def test_candidate_scales_start_at_one_and_are_normalised():
    s = candidate_scales(torch.tensor([0.5, 1.0, 8.0, 2.0]), n_grid=4)
    assert s.shape == (4, 4)
    torch.testing.assert_close(s[0], torch.ones(4))
    torch.testing.assert_close(s.amax(1) * s.amin(1), torch.ones(4))
    assert torch.equal(s[3].argsort(), torch.tensor([0, 1, 3, 2]))


def test_clip_search_never_worse_than_no_clip_and_helps_on_outlier_weights():
    x, w, st = planted_layer(seed=3)
    w[torch.arange(0, 96, 3), 5] = 1.5  # rare large weights stretch some groups' ranges
    clip = search_clip(w, st, SPEC, max_shrink=0.5, n_grid=20, two_sided=False)
    absmax = w.view(96, -1, 32).abs().amax(-1)
    assert bool((clip <= absmax).all()) and bool((clip >= 0.5 * absmax - 1e-6).all())
    assert bool((clip < absmax).any())
    one_sided = output_mse(x, w, fake_quantize(w, SPEC, clip))
    assert one_sided < output_mse(x, w, fake_quantize(w, SPEC))

    bounds = search_clip(w, st, SPEC, max_shrink=0.5, n_grid=20)
    lo, hi = group_minmax(w, SPEC)
    assert bool((bounds.hi <= hi).all()) and bool((bounds.hi >= 0.5 * hi - 1e-6).all())
    assert bool((bounds.lo >= lo).all()) and bool((bounds.lo <= 0.5 * lo + 1e-6).all())
    assert bool((bounds.hi < hi).any()) and bool((bounds.lo > lo).any())
    assert output_mse(x, w, fake_quantize(w, SPEC, bounds)) < one_sided  # the outliers sit on one side


def chosen_pair(clip, o, grp):
    return clip.lo[o, grp], clip.hi[o, grp]


@pytest.mark.parametrize("two_sided", [False, True])
def test_clip_search_picks_each_groups_best_candidate_by_its_gram_block(two_sided):
    x, w, st = planted_layer(seed=5, in_f=64, out_f=8, salient=(3, 40))
    clip = search_clip(w, st, SPEC, max_shrink=0.3, n_grid=10, two_sided=two_sided)
    ratios = [1.0, 0.9, 0.8]
    lo, hi = group_minmax(w, SPEC)
    absmax = group_absmax(w, SPEC)
    for o in range(8):
        for grp in range(2):
            cols = slice(32 * grp, 32 * grp + 32)
            row = w[o:o + 1, cols]
            if two_sided:  # every pair of the coarse grid (1, 0.8), which the search tries before refining
                cands = [Bounds(lo[o:o + 1, grp:grp + 1] * a, hi[o:o + 1, grp:grp + 1] * b)
                         for b in ratios[::2] for a in ratios[::2]]
                sides = zip(chosen_pair(clip, o, grp), (lo[o, grp], hi[o, grp]))
                on_grid = [round(float(c / m), 6) in ratios for c, m in sides]
                assert all(on_grid)
                chosen = Bounds(clip.lo[o:o + 1, grp:grp + 1], clip.hi[o:o + 1, grp:grp + 1])
            else:
                cands = [absmax[o:o + 1, grp:grp + 1] * r for r in ratios]
                chosen = clip[o:o + 1, grp:grp + 1]
            errs = [(x[:, cols] @ (fake_quantize(row, SPEC, c) - row).T).pow(2).sum().item() for c in cands]
            got = (x[:, cols] @ (fake_quantize(row, SPEC, chosen) - row).T).pow(2).sum().item()
            assert got <= min(errs) * (1 + 1e-4) + 1e-9


def _perturb_norms(model):
    """Random init leaves RMSNorm weights trivial (1, or 0 for Gemma); make every fold visible."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=gen))


def _fold_random_scales(model, mapping, seed=0):
    gen = torch.Generator().manual_seed(seed)
    folded = 0
    for layer in decoder_layers(model, mapping):
        for group in mapping.scale_groups:
            if not can_fold(layer, group):
                continue
            width = layer.get_submodule(group.linears[0]).in_features
            scale = torch.exp(torch.randn(width, generator=gen))  # spans roughly 0.05 .. 20
            fold_scale(layer, group, scale, mapping)
            folded += 1
    return folded


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_scales_into_every_group_leaves_fp_logits_unchanged(arch):
    # num_key_value_heads == num_attention_heads, so the v->o group folds too
    model = tiny_model(arch, vocab_size=256, num_key_value_heads=4)
    _perturb_norms(model)
    mapping = mapping_for(model)
    ids = random_calib(n=2, seqlen=24).input_ids
    with torch.no_grad():
        ref = model(ids).logits
        n = _fold_random_scales(model, mapping)
        out = model(ids).logits
    assert n == len(mapping.scale_groups) * model.config.num_hidden_layers
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-4


def test_gemma_fold_must_respect_the_plus_one_norm():
    """The same fold treating Gemma's norm as a plain multiplier changes the output: the +1 matters."""
    model = tiny_model("gemma3_text", vocab_size=256, num_key_value_heads=4)
    _perturb_norms(model)
    mapping = mapping_for(model)
    wrong = ArchMapping(mapping.layers, mapping.input_sets, mapping.scale_groups, norm_plus_one=False)
    ids = random_calib(n=2, seqlen=24).input_ids
    with torch.no_grad():
        ref = model(ids).logits
        _fold_random_scales(model, wrong)
        out = model(ids).logits
    assert ((out - ref).norm() / ref.norm()).item() > 1e-2


def test_gqa_blocks_the_v_to_o_fold_only():
    model = tiny_model("llama", vocab_size=256)  # 4 query heads, 2 KV heads
    mapping = mapping_for(model)
    layer = decoder_layers(model, mapping)[0]
    foldable = {g.prev: can_fold(layer, g) for g in mapping.scale_groups}
    assert foldable == {"input_layernorm": True, "self_attn.v_proj": False,
                        "post_attention_layernorm": True, "mlp.up_proj": True}


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_end_to_end_quantizes_every_target_and_logs_skipped_gqa_groups(arch, caplog):
    model = tiny_model(arch, vocab_size=256)  # GQA: 4 query heads share 2 KV heads
    calib = random_calib()
    targets = set(target_linears(model))
    with caplog.at_level(logging.WARNING, logger="methods.awq"):
        res = methods.get("awq").quantize(model, calib, method_cfg("awq", n_grid=8))
    assert set(res.qweights) == targets
    for name, lin in target_linears(model).items():
        torch.testing.assert_close(lin.weight, res.qweights[name].dequantize(), rtol=0, atol=0)
    with torch.no_grad():
        assert bool(model(calib.input_ids).logits.isfinite().all())
    assert "self_attn.v_proj->self_attn.o_proj" in caplog.text
    assert all("alpha[self_attn.v_proj]" not in s for s in res.layers)
    assert all("alpha[input_layernorm]" in s for s in res.layers)


def test_awq_scales_v_to_o_without_gqa_and_logs_nothing(caplog):
    model = tiny_model("qwen2", vocab_size=256, num_key_value_heads=4)
    with caplog.at_level(logging.WARNING, logger="methods.awq"):
        res = methods.get("awq").quantize(model, random_calib(), method_cfg("awq", n_grid=8, clip=False))
    assert "skipped" not in caplog.text
    assert all("alpha[self_attn.v_proj]" in s for s in res.layers)


def _planted_model():
    """A tiny Llama whose norms amplify a few channels 20x: the salient inputs AWQ is built for."""
    model = tiny_model("llama", vocab_size=256, num_key_value_heads=4, hidden_size=128, intermediate_size=256,
                       head_dim=32)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[[5, 50, 90]] = 20.0
    return model


def _logit_mse(name, **kw):
    model = _planted_model()
    calib = random_calib(n=8, seqlen=64)
    ids = random_calib(n=4, seqlen=64, seed=1).input_ids
    with torch.no_grad():
        ref = model(ids).logits
    methods.get(name).quantize(model, calib, method_cfg(name, **kw))
    with torch.no_grad():
        return (model(ids).logits - ref).pow(2).mean().item()


def test_awq_and_its_ablations_beat_rtn_on_a_model_with_salient_channels():
    rtn = _logit_mse("rtn")
    assert _logit_mse("awq_scale", n_grid=10) < rtn
    assert _logit_mse("awq", n_grid=10) < rtn


def test_awq_needs_calibration_data():
    with pytest.raises(ValueError, match="calibration"):
        methods.get("awq").quantize(tiny_model("llama", vocab_size=256), None, method_cfg("awq"))


def test_sequential_awq_searches_on_quantized_upstream_outputs():
    rtn = _logit_mse("rtn")
    fp_inputs = _logit_mse("awq", n_grid=10)
    sequential = _logit_mse("awq", n_grid=10, sequential=True)
    assert sequential < rtn
    assert sequential != fp_inputs  # layer 1 saw layer 0's quantized outputs


def test_clip_qk_decides_whether_q_and_k_get_a_searched_range():
    calib = random_calib()
    q_scales = {}
    for clip_qk in (True, False):
        model = tiny_model("llama", vocab_size=256)
        res = methods.get("awq").quantize(model, calib, method_cfg("awq", n_grid=8, scale=False, clip_qk=clip_qk))
        name = "model.layers.0.self_attn.q_proj"
        q_scales[clip_qk] = res.qweights[name].scale
        plain = QuantizedWeight.from_weight(tiny_model("llama", vocab_size=256).get_submodule(name).weight, SPEC16)
        assert torch.equal(q_scales[clip_qk], plain.scale) != clip_qk  # without the search: min/max ranges
    assert bool((q_scales[True] <= q_scales[False]).all())


@pytest.mark.parametrize("two_sided", [False, True])
def test_clip_refinement_never_raises_a_rows_full_output_error(two_sided):
    x, w, st = planted_layer(seed=11)
    x += 0.5  # a nonzero input mean: the groups' clipping biases add up along a row
    st = InputStats.empty(x.shape[1])
    st.add(x)

    def row_errors(clip):
        return (x @ (fake_quantize(w, SPEC, clip) - w).T).pow(2).sum(dim=0)

    first = row_errors(search_clip(w, st, SPEC, 0.5, 20, two_sided))
    refined = row_errors(search_clip(w, st, SPEC, 0.5, 20, two_sided, refine=2))
    assert bool((refined <= first * (1 + 1e-5)).all())
    assert refined.sum() < 0.99 * first.sum()


def test_search_damp_searches_on_the_gram_plus_its_share_of_the_mean_diagonal():
    x, w, st = planted_layer(seed=11, in_f=64, out_f=16, salient=(3, 40))
    w[::3, 5] = 1.0  # outliers give the clip search something to choose
    damp = 0.5
    before = st.gram.clone()
    ridged = InputStats(st.gram + damp * st.gram.diagonal().mean() * torch.eye(64), st.abs_sum.clone(), st.tokens)
    for two_sided in (False, True):
        got = search_clip(w, st, SPEC, 0.5, 20, two_sided, refine=1, damp=damp)
        want = search_clip(w, ridged, SPEC, 0.5, 20, two_sided, refine=1)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    s_got, best_got, losses_got = search_scale(w, st, SPEC, 20, duo=True, damp=damp)
    s_want, best_want, losses_want = search_scale(w, ridged, SPEC, 20, duo=True)
    assert best_got == best_want and torch.equal(s_got, s_want)
    assert torch.allclose(losses_got, losses_want)
    assert torch.equal(st.gram, before)  # the statistics are left as they were
    # the ridge weighs every channel's error alike, so it must change what the undamped search scores
    assert not torch.allclose(search_scale(w, st, SPEC, 20, duo=True)[2], losses_got)
