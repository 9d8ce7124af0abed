"""The KL autoencoder of Stable Diffusion (Rombach et al. 2022, Sec. 3 and App. G) in the layout
of diffusers' `AutoencoderKL`, so that the released VAEs load into it: SD 1.x / 2.x's `vae/`
and the `sd-vae-ft-mse` / `sd-vae-ft-ema` decoders (the latent space of DiT and SiT as well).

Encoder: conv_in, per level `layers_per_block` residual blocks (`DownEncoderBlock2D`) and,
except after the last level, a stride-2 convolution padded right and bottom only; middle block
(residual, single-head self-attention, residual); GroupNorm, SiLU, conv_out to 2 x
`latent_channels` moments, then `quant_conv` (1x1). Decoder: `post_quant_conv` (1x1), conv_in,
middle block, per level from the deepest `layers_per_block + 1` residual blocks
(`UpDecoderBlock2D`) and, except after the last, nearest-neighbour upsampling and a
convolution; GroupNorm, SiLU, conv_out. Every GroupNorm has eps 1e-6. The SD VAE
(block_out_channels (128, 256, 512, 512), 2 layers per block) has 83,653,863 parameters.

The posterior is `autoencoder.DiagonalGaussian` (log variance clipped to [-30, 20], as
diffusers' `DiagonalGaussianDistribution`). The latent scale (0.18215 for SD) is the caller's:
diffusion runs on `scaling_factor * z`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.autoencoder import DiagonalGaussian
from diffusion_jax.models.ldm_layers import (MultiHeadAttention, ResnetBlock2D, conv, downsample,
                                             upsample)

Dtype = Any


class MidBlock(nn.Module):
    """`UNetMidBlock2D` without a time embedding: residual, h + Attn(GN h) over the H W pixels
    (optional; one head, q/k/v with bias), residual."""

    groups: int = 32
    attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        res = lambda name: ResnetBlock2D(h.shape[-1], self.groups, 1e-6, dtype=self.dtype,  # noqa: E731
                                         name=name)
        h = res("res_0")(h)
        if self.attention:
            b, hgt, wid, c = h.shape
            a = nn.GroupNorm(self.groups, epsilon=1e-6, dtype=self.dtype, name="attn_norm")(h)
            a = MultiHeadAttention(1, use_bias=True, dtype=self.dtype, name="attn")(
                a.reshape(b, hgt * wid, c))
            h = h + a.reshape(b, hgt, wid, c)
        return res("res_1")(h)


class Level(nn.Module):
    """`num_layers` residual blocks to `channels`, then the level's resampling (if any)."""

    channels: int
    num_layers: int
    resample: str  # "down", "up" or "none"
    groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        for j in range(self.num_layers):
            h = ResnetBlock2D(self.channels, self.groups, 1e-6, dtype=self.dtype,
                              name=f"res_{j}")(h)
        if self.resample == "down":
            return downsample(h, self.dtype, asymmetric=True)
        return upsample(h, self.dtype) if self.resample == "up" else h


def norm_act_conv(h, channels: int, groups: int, dtype: Dtype):
    """GroupNorm, SiLU, 3x3 conv_out."""
    h = nn.silu(nn.GroupNorm(groups, epsilon=1e-6, dtype=dtype, name="norm_out")(h))
    return conv(channels, 3, dtype, "conv_out")(h)


class Encoder(nn.Module):
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = conv(self.block_out_channels[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        last = len(self.block_out_channels) - 1
        for i, ch in enumerate(self.block_out_channels):
            h = Level(ch, self.layers_per_block, "down" if i < last else "none",
                      self.norm_num_groups, self.dtype, name=f"down_{i}")(h)
        h = MidBlock(self.norm_num_groups, self.mid_attention, self.dtype, name="mid")(h)
        return norm_act_conv(h, 2 * self.latent_channels, self.norm_num_groups, self.dtype)


class Decoder(nn.Module):
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    out_channels: int = 3
    norm_num_groups: int = 32
    mid_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        chans = list(reversed(self.block_out_channels))
        h = conv(chans[0], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        h = MidBlock(self.norm_num_groups, self.mid_attention, self.dtype, name="mid")(h)
        for i, ch in enumerate(chans):
            h = Level(ch, self.layers_per_block + 1, "up" if i < len(chans) - 1 else "none",
                      self.norm_num_groups, self.dtype, name=f"up_{i}")(h)
        return norm_act_conv(h, self.out_channels, self.norm_num_groups, self.dtype)


class AutoencoderKL(nn.Module):
    """x (B, H, W, in_channels) in [-1, 1] -> q(z | x), z (B, H / f, W / f, latent_channels)
    with f = 2^(levels - 1) (8 for SD) -> x'.

    `encode(x)` returns the posterior (`DiagonalGaussian`), `decode(z)` the image (float32),
    called as `module.apply(variables, x, method="encode")`; `__call__(x, rng)` decodes a
    posterior sample (the mean when rng is None) and returns (x', posterior). Parameters:
    `encoder/{conv_in, down_<i>/{res_<j>, downsample}, mid/{res_0, attn_norm, attn, res_1},
    norm_out, conv_out}`, `quant_conv`, `post_quant_conv`, `decoder/{conv_in, mid,
    up_<i>/{res_<j>, upsample}, norm_out, conv_out}` (decoder level 0 is the deepest, as
    diffusers counts)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    dtype: Dtype = jnp.float32

    def setup(self):
        shared = dict(block_out_channels=self.block_out_channels,
                      layers_per_block=self.layers_per_block,
                      norm_num_groups=self.norm_num_groups, mid_attention=self.mid_attention,
                      dtype=self.dtype)
        self.encoder = Encoder(latent_channels=self.latent_channels, **shared)
        self.decoder = Decoder(out_channels=self.out_channels, **shared)
        if self.use_quant_conv:
            self.quant_conv = conv(2 * self.latent_channels, 1, self.dtype, "quant_conv")
        if self.use_post_quant_conv:
            self.post_quant_conv = conv(self.latent_channels, 1, self.dtype, "post_quant_conv")

    def encode(self, x) -> DiagonalGaussian:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"AutoencoderKL expects {self.in_channels} channels, got {x.shape}")
        moments = self.encoder(x)
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments.astype(jnp.float32))

    def decode(self, z):
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z.astype(self.dtype))
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x, rng=None):
        posterior = self.encode(x)
        z = posterior.mode() if rng is None else posterior.sample(rng)
        return self.decode(z), posterior

    def latent_shape(self, image_shape) -> tuple:
        """(H / f, W / f, latent_channels) of an (H, W, C) image."""
        factor = 2 ** (len(self.block_out_channels) - 1)
        return (image_shape[0] // factor, image_shape[1] // factor, self.latent_channels)
