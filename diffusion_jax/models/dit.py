"""DiT: a diffusion transformer with adaLN-Zero conditioning (Peebles & Xie 2023).

The image (B, H, W, C) is cut into p x p patches, each linearly embedded, plus fixed 2-D
sine-cosine position embeddings. The noise level t (sinusoidal embedding -> MLP) plus the
label embedding (num_classes > 0) or the pooled context (cross_attention) is the condition c.
Each block regresses shift, scale and gate of its two LayerNorms from c (Sec. 3.2, adaLN-Zero:
the regression starts at zero, so every block starts as the identity); with `cross_attention`
the block also attends to the context {"context": (B, L, D), "mask": (B, L)} between
self-attention and MLP (as PixArt-alpha does for text). A final adaptive LayerNorm and a
zero-initialised linear layer give p x p x out_channels per patch, reassembled to the image.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.attention import Attention, masked_mean
from diffusion_jax.models.layers import default_init, sinusoidal_embedding, zero_init

Dtype = Any


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
    """(h w, dim) fixed position embeddings: sin/cos of the row in half the channels, of the
    column in the other half (the MAE / DiT `get_2d_sincos_pos_embed`)."""
    def one_axis(pos, d):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    return np.concatenate([one_axis(rows, dim // 2), one_axis(cols, dim // 2)], 1).astype(
        np.float32)


def modulate(x, shift, scale):
    """x (1 + scale) + shift with (B, D) shift and scale over the tokens of x (B, N, D)."""
    return x * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    num_heads: int = 4
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c, context=None, mask=None):
        d = x.shape[-1]
        norm = lambda name: nn.LayerNorm(use_bias=False, use_scale=False, epsilon=1e-6,  # noqa: E731
                                         dtype=self.dtype, name=name)
        mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=zero_init, name="adaLN_modulation")(
            nn.silu(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        x = x + gate1[:, None] * Attention(self.num_heads, self.dtype, name="attn")(
            modulate(norm("norm1")(x), shift1, scale1))
        if context is not None:
            x = x + Attention(self.num_heads, self.dtype, name="cross_attn")(
                nn.LayerNorm(dtype=self.dtype, name="norm_cross")(x), context.astype(self.dtype),
                mask)
        h = modulate(norm("norm2")(x), shift2, scale2)
        h = nn.Dense(self.mlp_ratio * d, dtype=self.dtype, kernel_init=default_init)(h)
        h = nn.Dense(d, dtype=self.dtype, kernel_init=default_init)(nn.gelu(h))
        return x + gate2[:, None] * h


class DiT(nn.Module):
    """`__call__(x, t, cond, train)`: x NHWC with H, W divisible by `patch_size`, t (B,) noise
    conditioning, cond (B,) labels (num_classes > 0; label num_classes is the null label) or a
    context dict (cross_attention). DiT-S/2 is hidden 384, depth 12, 6 heads, patch 2."""

    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    num_classes: int = 0
    cross_attention: bool = False
    out_channels: Optional[int] = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False):
        b, hgt, wid, ch = x.shape
        p, d = self.patch_size, self.hidden_size
        out_ch = self.out_channels or ch
        if hgt % p or wid % p:
            raise ValueError(f"image {hgt}x{wid} is not divisible into {p}x{p} patches")
        h = nn.Conv(d, (p, p), strides=(p, p), dtype=self.dtype, kernel_init=default_init,
                    name="patch_embed")(x.astype(self.dtype))
        gh, gw = hgt // p, wid // p
        h = h.reshape(b, gh * gw, d) + jnp.asarray(sincos_2d(gh, gw, d), self.dtype)

        c = sinusoidal_embedding(jnp.asarray(t, jnp.float32), 256)
        c = nn.Dense(d, dtype=self.dtype, kernel_init=default_init, name="t_embed0")(c)
        c = nn.Dense(d, dtype=self.dtype, kernel_init=default_init, name="t_embed1")(nn.silu(c))
        context = mask = None
        if self.num_classes > 0:
            if cond is None:
                cond = jnp.full((b,), self.num_classes, jnp.int32)
            c = c + nn.Embed(self.num_classes + 1, d, name="label_embed")(cond)
        if self.cross_attention:
            if cond is None:
                raise ValueError("a cross-attention DiT needs a context {'context', 'mask'}")
            context, mask = cond["context"], cond["mask"]
            c = c + nn.Dense(d, dtype=self.dtype, kernel_init=default_init,
                             name="context_embed")(masked_mean(context, mask))
        for i in range(self.depth):
            h = DiTBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"block{i}")(
                h, c, context, mask)
        shift, scale = jnp.split(nn.Dense(2 * d, dtype=self.dtype, kernel_init=zero_init,
                                          name="final_modulation")(nn.silu(c)), 2, axis=-1)
        h = modulate(nn.LayerNorm(use_bias=False, use_scale=False, epsilon=1e-6,
                                  dtype=self.dtype)(h), shift, scale)
        h = nn.Dense(p * p * out_ch, dtype=self.dtype, kernel_init=zero_init, name="final")(h)
        h = h.reshape(b, gh, gw, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, hgt, wid, out_ch).astype(jnp.float32)
