"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022,
Sec. 3 and App. G): an encoder to the moments of a diagonal Gaussian posterior q(z | x), a
decoder back to pixels, the latent downsampled by 2 per level after the first.

Encoder: conv, per level `num_res_blocks` residual blocks then a stride-2 convolution (not
after the last level), middle block (residual, self-attention, residual), GroupNorm, SiLU,
conv to 2 z_channels (mean, log variance). The decoder mirrors it with nearest-neighbour
upsampling. Every layer computes in `dtype` with float32 parameters; outputs are float32.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import (AttnBlock, Downsample, Upsample, default_init,
                                         group_count, group_norm, zero_init)

Dtype = Any


@flax.struct.dataclass
class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), logvar clipped to [-30, 20] as in LDM."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, rng: jax.Array) -> jax.Array:
        """z = mean + std n, n ~ N(0, I) (the reparameterisation trick)."""
        return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) per example, in closed form:
        1/2 sum_i (mean_i^2 + var_i - 1 - log var_i) over every latent dimension (B,)."""
        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))


class ResBlock(nn.Module):
    """GN, SiLU, conv, GN, SiLU, conv (zero-initialised) + skip (1x1 conv if channels change)."""

    out_ch: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.silu(group_norm(self.dtype, group_count(x.shape[-1]))(x))
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=default_init)(h)
        h = nn.silu(group_norm(self.dtype, group_count(self.out_ch))(h))
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=zero_init)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), dtype=self.dtype, name="nin_shortcut")(x)
        return x + h


def middle_block(h, attention: bool, dtype):
    """At the lowest resolution: residual block, self-attention (optional), residual block."""
    h = ResBlock(h.shape[-1], dtype)(h)
    if attention:
        h = AttnBlock(dtype)(h)
    return ResBlock(h.shape[-1], dtype)(h)


def conv_out(h, channels: int, dtype):
    """GroupNorm, SiLU, 3x3 conv to `channels`, as float32."""
    h = nn.silu(group_norm(dtype, group_count(h.shape[-1]))(h))
    return nn.Conv(channels, (3, 3), dtype=dtype, name="conv_out")(h).astype(jnp.float32)


class Encoder(nn.Module):
    ch: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    z_channels: int = 2
    attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.ch, (3, 3), dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dtype)(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(True, self.dtype)(h)
        return conv_out(middle_block(h, self.attention, self.dtype), 2 * self.z_channels,
                        self.dtype)


class Decoder(nn.Module):
    ch: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    out_channels: int = 1
    attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3), dtype=self.dtype, name="conv_in")(
            z.astype(self.dtype))
        h = middle_block(h, self.attention, self.dtype)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * mult, self.dtype)(h)
            if level != 0:
                h = Upsample(True, self.dtype)(h)
        return conv_out(h, self.out_channels, self.dtype)


class AutoencoderKL(nn.Module):
    """x (B, H, W, C) -> q(z | x) with z (B, H / 2^(n-1), W / 2^(n-1), z_channels) -> x'.

    `__call__(x, rng)` returns (reconstruction of a posterior sample, posterior); with rng None
    it decodes the posterior mean. `encode` and `decode` are the two halves
    (`module.apply(variables, x, method='encode')`)."""

    ch: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    z_channels: int = 2
    out_channels: Optional[int] = None
    attention: bool = True
    dtype: Dtype = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.ch, self.ch_mult, self.num_res_blocks, self.z_channels,
                               self.attention, self.dtype)
        self.decoder = Decoder(self.ch, self.ch_mult, self.num_res_blocks,
                               self.out_channels or 1, self.attention, self.dtype)

    def encode(self, x) -> DiagonalGaussian:
        return DiagonalGaussian.from_moments(self.encoder(x))

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x, rng=None):
        posterior = self.encode(x)
        z = posterior.mode() if rng is None else posterior.sample(rng)
        return self.decode(z), posterior

    def latent_shape(self, image_shape) -> tuple:
        factor = 2 ** (len(self.ch_mult) - 1)
        h, w = image_shape[0] // factor, image_shape[1] // factor
        return (h, w, self.z_channels)
