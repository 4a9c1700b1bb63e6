"""The blocked CPU attention computes what sdpa computes, and only takes the calls it can."""
import pytest
import torch
import torch.nn.functional as F

from harness import attention
from tests.conftest import tiny_model


@pytest.mark.parametrize("T", [129, 300, 512])
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4)])
def test_blocked_attention_equals_the_fused_kernel(T, heads, kv_heads):
    torch.manual_seed(T)
    q, k, v = (torch.randn(2, h, T, 32) for h in (heads, kv_heads, kv_heads))
    for scaling in (None, 0.3):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
        out = attention.blocked_causal_attention(q, k, v, scaling)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    # the causal mask holds: changing the last key/value moves nothing but the last query's output
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 5
    v2[:, :, -1] -= 5
    base, moved = attention.blocked_causal_attention(q, k, v), attention.blocked_causal_attention(q, k2, v2)
    assert torch.equal(moved[:, :, :-1], base[:, :, :-1])
    assert not torch.equal(moved[:, :, -1], base[:, :, -1])


def _logits(model, impl, **kw):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(**kw, use_cache=False).logits.float()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_a_bf16_model_gives_sdpa_logits_and_delegates_what_it_cannot_take(arch, monkeypatch):
    # gemma3: five sliding-window layers (window 64 < the 200 tokens) to one full-attention layer
    model = tiny_model(arch, num_hidden_layers=6 if arch == "gemma3_text" else 2).to(torch.bfloat16)
    attention.use_blocked_attention(model)
    assert model.config._attn_implementation == attention.NAME
    taken = []
    plain = attention._plain_causal
    monkeypatch.setattr(attention, "_plain_causal", lambda *a: taken.append(plain(*a)) or taken[-1])
    ids = torch.randint(0, 1000, (2, 200))
    ours = _logits(model, attention.NAME, input_ids=ids)
    assert any(taken)  # the full-attention layers took the blocked path
    if arch == "gemma3_text":
        assert not all(taken)  # the sliding-window layers (a mask tensor) went to sdpa
    ref = _logits(model, "sdpa", input_ids=ids)
    assert (ours - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 rounding, not a different function
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() > 0.97

    taken.clear()
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding: a mask tensor, so sdpa's kernel
    padded = _logits(model, attention.NAME, input_ids=ids, attention_mask=mask)
    assert taken and not any(taken)
    torch.testing.assert_close(padded, _logits(model, "sdpa", input_ids=ids, attention_mask=mask), atol=0, rtol=0)


def test_fp32_models_keep_the_fused_kernel(monkeypatch):
    model = tiny_model("llama")
    attention.use_blocked_attention(model)
    ids = torch.randint(0, 1000, (1, 200))
    torch.testing.assert_close(_logits(model, attention.NAME, input_ids=ids), _logits(model, "sdpa", input_ids=ids),
                               atol=0, rtol=0)
