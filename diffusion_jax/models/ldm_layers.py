"""Layers of the latent-diffusion networks as Stable Diffusion ships them (Rombach et al. 2022;
the block layout of diffusers' `resnet.py`, `downsampling.py`, `upsampling.py` and
`attention_processor.py`), shared by the SD U-Net (`sd_unet.py`), the VAE (`vae.py`) and the
CLIP text encoder (`clip_text.py`).

PyTorch modules keep NCHW activations and (out, in[, kh, kw]) weights; ours are NHWC with flax's
(in, out) Dense and (kh, kw, in, out) Conv kernels (`importers/stable_diffusion.py` transposes).
Every layer computes in `dtype` with float32 parameters.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1,
         padding=None) -> nn.Conv:
    """A `kernel` x `kernel` convolution with torch's default padding (kernel // 2 each side)."""
    pad = kernel // 2 if padding is None else padding
    pads = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pads,
                   dtype=dtype, name=name)


class ResnetBlock2D(nn.Module):
    """diffusers' `ResnetBlock2D`: GN, SiLU, conv, + Linear(SiLU(temb)) when a time embedding is
    given, GN, SiLU, dropout, conv, plus the input (through a 1x1 `conv_shortcut` when the
    channel count changes). Output scale 1, as every SD block has it."""

    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        norm = lambda name: nn.GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype,  # noqa: E731
                                         name=name)
        h = conv(self.out_channels, 3, self.dtype, "conv1")(nn.silu(norm("norm1")(x)))
        if temb is not None:
            h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(
                nn.silu(temb))[:, None, None, :]
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(norm("norm2")(h)))
        h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


def downsample(x, dtype: Dtype, asymmetric: bool):
    """Halve the resolution with a stride-2 3x3 convolution. The U-Net pads 1 on every side
    (`Downsample2D(padding=1)`); the VAE encoder pads only right and bottom (`padding=0` after
    `F.pad(x, (0, 1, 0, 1))`)."""
    pads = ((0, 1), (0, 1)) if asymmetric else ((1, 1), (1, 1))
    return conv(x.shape[-1], 3, dtype, "downsample", stride=2, padding=pads)(x)


def upsample(x, dtype: Dtype):
    """Double the resolution by nearest-neighbour repetition, then a 3x3 convolution."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(x.shape[-1], 3, dtype, "upsample")(x)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention of queries x (B, N, C) over `context` (B, L, D)
    (default x): q, k, v projections to C, softmax(q k^T / sqrt(C / heads)) v, output projection.
    `mask` (B, L) True = a key that may be attended to; `causal` masks later positions (CLIP's
    text transformer). Logits and softmax are float32 (`jax.nn.dot_product_attention`), as
    diffusers' `upcast_attention` / `upcast_softmax` ask for."""

    num_heads: int
    use_bias: bool = False  # of q, k, v; the output projection always has one
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, mask: Optional[jax.Array] = None):
        context = x if context is None else context
        b, n, c = x.shape
        dense = lambda name, bias=self.use_bias: nn.Dense(c, use_bias=bias, dtype=self.dtype,  # noqa: E731
                                                          name=name)
        split = lambda h: h.reshape(h.shape[:2] + (self.num_heads, c // self.num_heads))  # noqa: E731
        q, k, v = (split(dense(name)(h)) for name, h in (("q", x), ("k", context), ("v", context)))
        key_mask = None if mask is None else mask[:, None, None, :].astype(bool)
        h = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=self.causal)
        return dense("out", True)(h.reshape(b, n, c))
