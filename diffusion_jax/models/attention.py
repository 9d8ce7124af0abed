"""Transformer blocks with cross-attention to a sequence of embeddings (text conditioning).

Latent diffusion (Rombach et al. 2022, Sec. 3.3) conditions the U-Net through
`SpatialTransformer` blocks: the feature map becomes a sequence of pixels, each block applies
self-attention, cross-attention to the context (B, L, D) (keys and values from the context,
padded positions masked out) and an MLP, each pre-LayerNorm with a residual, and the output
projection starts at zero so the block starts as the identity. All attention is
`jax.nn.dot_product_attention`; every layer computes in `dtype` with float32 parameters.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import default_init, group_count, group_norm, zero_init

Dtype = Any


def key_mask(mask: Optional[jax.Array]) -> Optional[jax.Array]:
    """A (B, L) bool mask of valid keys as the (B, 1, 1, L) mask of dot_product_attention."""
    return None if mask is None else mask[:, None, None, :].astype(bool)


class Attention(nn.Module):
    """Multi-head attention of queries x (B, N, C) over `context` (B, L, D), default x itself;
    `mask` (B, L) True = a key that may be attended to. Output (B, N, C)."""

    num_heads: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, mask=None):
        context = x if context is None else context
        b, n, c = x.shape
        head = c // self.num_heads
        dense = lambda name: nn.Dense(c, use_bias=False, dtype=self.dtype,  # noqa: E731
                                      kernel_init=default_init, name=name)
        split = lambda h: h.reshape(h.shape[:2] + (self.num_heads, head))  # noqa: E731
        q, k, v = split(dense("query")(x)), split(dense("key")(context)), split(dense("value")(context))
        h = jax.nn.dot_product_attention(q, k, v, mask=key_mask(mask)).reshape(b, n, c)
        return nn.Dense(c, dtype=self.dtype, kernel_init=default_init, name="out")(h)


class TransformerBlock(nn.Module):
    """x + SelfAttn(LN x); x + CrossAttn(LN x, context, mask); x + MLP(LN x) (GELU, 4x wide).
    Without a context it is a plain (self-attention) transformer block; `x_mask` (B, N) masks
    the padded positions of x as keys of the self-attention."""

    num_heads: int = 4
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, mask=None, x_mask=None):
        norm = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)  # noqa: E731
        x = x + Attention(self.num_heads, self.dtype, name="self_attn")(norm("norm1")(x),
                                                                        mask=x_mask)
        if context is not None:
            x = x + Attention(self.num_heads, self.dtype, name="cross_attn")(
                norm("norm2")(x), context.astype(self.dtype), mask)
        h = nn.Dense(self.mlp_ratio * x.shape[-1], dtype=self.dtype, kernel_init=default_init)(
            norm("norm3")(x))
        return x + nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=default_init)(nn.gelu(h))


class SpatialTransformer(nn.Module):
    """A feature map (B, H, W, C) through `depth` transformer blocks over its pixels, with
    cross-attention to `context` (B, L, D): GroupNorm, 1x1 projection in, blocks, zero-initialised
    projection out, residual (Rombach et al. 2022, their `SpatialTransformer`)."""

    num_heads: int = 4
    depth: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, mask=None):
        b, hgt, wid, c = x.shape
        h = group_norm(self.dtype, group_count(c))(x)
        h = nn.Dense(c, dtype=self.dtype, kernel_init=default_init, name="proj_in")(h)
        h = h.reshape(b, hgt * wid, c)
        for i in range(self.depth):
            h = TransformerBlock(self.num_heads, dtype=self.dtype, name=f"block{i}")(h, context, mask)
        h = nn.Dense(c, dtype=self.dtype, kernel_init=zero_init, name="proj_out")(h)
        return x + h.reshape(b, hgt, wid, c)


def masked_mean(context: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    """The mean of `context` (B, L, D) over its valid positions (B, D)."""
    if mask is None:
        return context.mean(axis=1)
    w = mask.astype(context.dtype)[..., None]
    return (context * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
