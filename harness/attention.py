"""Causal self-attention for whole windows on the CPU, in blocks of query rows.

On the CPU, torch's fused ``scaled_dot_product_attention`` kernel runs no faster in bf16 than in
fp32 (about 10 ms a layer for 2 × 512 tokens of the embedded model, 30% of the forward pass), while
bf16 matrix products run at several times the fp32 rate. This computes the same attention with
ordinary matrix products, one block of query rows at a time against the keys up to that block's
end, so the masked upper triangle is mostly never computed, and grouped-query heads share their key
and value head without copies: about half the kernel's time.

Only the plain case takes that path: bf16 CPU tensors (in fp32 the fused kernel is the faster one:
8.7 against 9.7 ms there), no mask tensor (causal attention over the whole
window, which is what sdpa is asked for then too), as many queries as keys, no dropout, position
bias or soft-capping. Every other call (decoding with a cache, padding masks, sliding windows
shorter than the input) goes to transformers' own sdpa function unchanged.
"""
from __future__ import annotations

import torch

NAME = "harness_blocked_sdpa"
# query rows per block: large enough for efficient matrix products, small enough to skip most of the
# masked triangle
QUERY_BLOCK = 128


def _plain_causal(module, query, key, attention_mask, dropout, is_causal, kwargs) -> bool:
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return (query.device.type == "cpu" and query.dtype == torch.bfloat16
            and attention_mask is None and causal and dropout == 0.0
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions", False)
            and query.shape[2] == key.shape[2] > QUERY_BLOCK
            and query.shape[1] % key.shape[1] == 0
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def blocked_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             scaling: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scaling + causal mask) v for q [b, h, T, d], k [b, h_kv, T, d], v [b, h_kv, T, d_v];
    returns [b, h, T, d_v]. The scores are softmaxed in float32 (torch's softmax accumulates in float32
    for bf16/fp16 inputs), like the fused kernel."""
    b, heads, T, d = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = d ** -0.5 if scaling is None else scaling
    q = (query * scale).view(b, kv_heads, group, T, d)
    k_t = key.transpose(-1, -2)[:, :, None]  # [b, h_kv, 1, d, T]: broadcast over the group's heads
    v = value[:, :, None]
    out = torch.empty(b, kv_heads, group, T, value.shape[-1], dtype=query.dtype, device=query.device)
    above = torch.ones(QUERY_BLOCK, QUERY_BLOCK, dtype=torch.bool, device=query.device).triu_(1)
    for start in range(0, T, QUERY_BLOCK):
        end = min(T, start + QUERY_BLOCK)
        scores = torch.matmul(q[:, :, :, start:end], k_t[..., :end])
        scores[..., start:end].masked_fill_(above[:end - start, :end - start], float("-inf"))
        out[:, :, :, start:end] = torch.matmul(torch.softmax(scores, dim=-1), v[:, :, :, :end])
    return out.view(b, heads, T, value.shape[-1])


def forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
            is_causal: bool | None = None, **kwargs):
    """An ``AttentionInterface`` function: the blocked path for the plain case, transformers' sdpa otherwise."""
    if _plain_causal(module, query, key, attention_mask, dropout, is_causal, kwargs):
        out = blocked_causal_attention(query, key, value, scaling)
        return out.transpose(1, 2).contiguous(), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def use_blocked_attention(model) -> None:
    """Switch a model that uses sdpa to this module's function (same masks as sdpa: only the kernel differs)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
