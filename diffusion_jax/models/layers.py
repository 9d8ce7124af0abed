"""Layers shared by the U-Nets: time embeddings, normalisation, residual and attention blocks.

Every layer takes `dtype`, the compute dtype (bfloat16 for speed); parameters stay float32.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
"""DDPM's initialiser (TF `variance_scaling(1, fan_avg, uniform)`); output layers start at zero."""
zero_init = nn.initializers.zeros


def rematerialized(module_cls, enabled: bool, static_argnums=(3,)):
    """`nn.remat(module_cls)` when `enabled`: its activations are recomputed in the backward
    pass instead of stored (Chen et al. 2016), trading compute for memory. The class keeps its
    name, so parameter paths, and checkpoints, are the same with and without it.
    `static_argnums` counts `self`: (3,) is `train` of `__call__(self, x, emb, train)`."""
    if not enabled:
        return module_cls
    cls = nn.remat(module_cls, static_argnums=static_argnums)
    cls.__name__ = cls.__qualname__ = module_cls.__name__
    return cls


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Transformer positional embedding of a (B,) float t (Ho et al. 2020, Appendix B).

    freq_k = max_period^(-k / (half - 1)), emb = [sin(t freq), cos(t freq)].
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def group_norm(dtype: Dtype, num_groups: int = 32, name: Optional[str] = None) -> nn.GroupNorm:
    """GroupNorm with `num_groups` groups (`group_count` of the channels); eps 1e-6."""
    return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, dtype=dtype, name=name)


def group_count(channels: int, max_groups: int = 32, num_groups: int = 0) -> int:
    """GroupNorm groups for `channels`: `num_groups` in every layer when it is > 0 (Ho et al.'s
    32, diffusers' `norm_num_groups`); otherwise 32 at the paper widths, fewer in narrow
    layers so that every group keeps at least 4 channels (score_sde's min(C // 4, 32)), and a
    divisor of C. With one channel per group, GroupNorm would subtract each channel's spatial
    mean and with it the per-channel time and label embedding that the residual block adds."""
    if num_groups > 0:
        return num_groups
    return math.gcd(channels, max(1, min(max_groups, channels // 4)))


class ResnetBlock(nn.Module):
    """DDPM residual block: GN, SiLU, conv, + Dense(SiLU(temb)), GN, SiLU, dropout, conv, skip.

    A 1x1 convolution ("NIN") maps the skip path when the channel count changes (Ho et al.).
    """

    out_ch: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    num_groups: int = 0  # GroupNorm groups; 0 = `group_count`'s rule

    @nn.compact
    def __call__(self, x, temb, train: bool):
        in_ch = x.shape[-1]
        h = nn.silu(group_norm(self.dtype, group_count(in_ch, num_groups=self.num_groups))(x))
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
        h = h + nn.Dense(self.out_ch, dtype=self.dtype)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.dtype, group_count(self.out_ch, num_groups=self.num_groups))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=zero_init)(h)
        if in_ch != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), dtype=self.dtype, kernel_init=default_init,
                        name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with a residual connection (Ho et al.)."""

    dtype: Dtype = jnp.float32
    num_groups: int = 0  # GroupNorm groups; 0 = `group_count`'s rule

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = group_norm(self.dtype, group_count(c, num_groups=self.num_groups))(x)
        qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=default_init, name="qkv")(h).reshape(b, hgt * wid, 3, 1, c)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, hgt, wid, c)
        return x + nn.Dense(c, dtype=self.dtype, kernel_init=zero_init, name="proj_out")(h)


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 convolution, or 2x2 average pooling.

    The convolution pads the input by one pixel at the bottom and right only: TensorFlow's
    'SAME' padding for an even size, as in Ho et al.'s code (diffusers: `downsample_padding=0`).
    """

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.with_conv:
            return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                           dtype=self.dtype, kernel_init=default_init)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour repetition, then an optional 3x3 convolution."""

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if self.with_conv:
            x = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, kernel_init=default_init)(x)
        return x
