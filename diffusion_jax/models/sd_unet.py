"""The conditional U-Net of Stable Diffusion 1.x / 2.x (Rombach et al. 2022, Sec. 3.3), in the
block layout of diffusers' `UNet2DConditionModel`, so that the released weights load into it
(`importers/stable_diffusion.py`).

Down path: per level `layers_per_block` residual blocks, each followed by a cross-attention
transformer where the level has attention (`CrossAttnDownBlock2D`; `DownBlock2D` without), then
a stride-2 convolution except after the last level. Middle (`UNetMidBlock2DCrossAttn`):
residual, transformer, residual. Up path, mirrored: `layers_per_block + 1` residual blocks per
level on the concatenation [h, skip], transformers where the mirrored down level has them, then
nearest-neighbour upsampling and a convolution except after the last level. The timestep
embedding is sinusoidal over `block_out_channels[0]` (cos first with `flip_sin_to_cos`,
frequencies exp(-ln(10^4) k / (half - freq_shift))) through Linear, SiLU, Linear to 4x that width.

The transformer (`Transformer2DModel`): GroupNorm (eps 1e-6), projection in, `transformer_depth`
blocks of x + SelfAttn(LN x), x + CrossAttn(LN x, context), x + GEGLU-FF(LN x) (LayerNorm eps
1e-5, q/k/v without bias), projection out, residual. SD 1.x projects with 1x1 convolutions and
SD 2.x with Linear layers: on a pixel sequence these are the same map, so both are Dense here
and the importer reshapes the 1x1 kernels. Heads: SD 1.x has 8 per level (diffusers' config
calls the head count `attention_head_dim`), SD 2.x 64 channels per head, i.e. (5, 10, 20, 20).

SD 1.5 (block_out_channels (320, 640, 1280, 1280), 8 heads, context 768) has 859,520,964
parameters; SD 2.1 ((5, 10, 20, 20) heads, context 1024) 865,910,724; the inpainting U-Nets
take `in_channels` 9 (latent, mask, masked-image latent).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import rematerialized
from diffusion_jax.models.ldm_layers import (MultiHeadAttention, ResnetBlock2D, conv, downsample,
                                             upsample)

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
    """diffusers' `get_timestep_embedding` of a (B,) float t: freq_k = max_period^(-k / (half -
    freq_shift)), k < half = dim // 2, [sin(t freq), cos(t freq)] or with `flip_sin_to_cos`
    [cos, sin]; zero-padded to an odd `dim`. Float32 (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                    / (half - freq_shift))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class GEGLUFeedForward(nn.Module):
    """diffusers' `FeedForward(activation_fn="geglu")`: [h, g] = Linear(x) (2 x 4C wide),
    Linear(h * GELU(g)) back to C (Shazeer 2020), exact (erf) GELU."""

    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h, gate = jnp.split(nn.Dense(2 * self.mult * x.shape[-1], dtype=self.dtype,
                                     name="proj")(x), 2, axis=-1)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="out")(
            h * nn.gelu(gate, approximate=False))


class BasicTransformerBlock(nn.Module):
    """x + SelfAttn(LN x); x + CrossAttn(LN x, context, mask); x + FF(LN x) (diffusers'
    `BasicTransformerBlock` with SD's settings)."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, mask=None):
        norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
        attn = lambda name: MultiHeadAttention(self.num_heads, dtype=self.dtype, name=name)  # noqa: E731
        x = x + attn("attn1")(norm("norm1")(x))
        x = x + attn("attn2")(norm("norm2")(x), context, mask)
        return x + GEGLUFeedForward(dtype=self.dtype, name="ff")(norm("norm3")(x))


class Transformer2D(nn.Module):
    """A feature map (B, H, W, C) through `depth` transformer blocks over its H W pixels:
    GroupNorm, projection in, blocks, projection out, plus the input."""

    num_heads: int
    depth: int = 1
    groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, mask=None):
        b, hgt, wid, c = x.shape
        h = nn.GroupNorm(self.groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        h = nn.Dense(c, dtype=self.dtype, name="proj_in")(h).reshape(b, hgt * wid, c)
        for i in range(self.depth):
            h = BasicTransformerBlock(self.num_heads, self.dtype, name=f"block_{i}")(h, context,
                                                                                  mask)
        return x + nn.Dense(c, dtype=self.dtype, name="proj_out")(h).reshape(b, hgt, wid, c)


class Blocks(nn.Module):
    """The settings every residual block and transformer of one U-Net share."""

    groups: int = 32
    eps: float = 1e-5
    dropout: float = 0.0
    transformer_depth: int = 1
    dtype: Dtype = jnp.float32
    remat: bool = False

    def res(self, channels: int, name: str) -> nn.Module:
        return rematerialized(ResnetBlock2D, self.remat)(channels, self.groups, self.eps,
                                                         self.dropout, self.dtype, name=name)

    def attn(self, num_heads: int, name: str) -> nn.Module:
        return rematerialized(Transformer2D, self.remat, static_argnums=())(
            num_heads, self.transformer_depth, self.groups, self.dtype, name=name)


class DownBlock(Blocks):
    """`CrossAttnDownBlock2D` (with `num_heads` > 0) or `DownBlock2D`: returns h and the
    outputs the up path takes as skips (after every layer and after the downsampling)."""

    channels: int = 320
    num_layers: int = 2
    num_heads: int = 0
    add_downsample: bool = True

    @nn.compact
    def __call__(self, h, temb, context, mask, train):
        outputs = []
        for j in range(self.num_layers):
            h = self.res(self.channels, f"res_{j}")(h, temb, train)
            if self.num_heads:
                h = self.attn(self.num_heads, f"attn_{j}")(h, context, mask)
            outputs.append(h)
        if self.add_downsample:
            h = downsample(h, self.dtype, asymmetric=False)
            outputs.append(h)
        return h, outputs


class MidBlock(Blocks):
    """`UNetMidBlock2DCrossAttn`: residual, transformer, residual."""

    num_heads: int = 8

    @nn.compact
    def __call__(self, h, temb, context, mask, train):
        h = self.res(h.shape[-1], "res_0")(h, temb, train)
        h = self.attn(self.num_heads, "attn_0")(h, context, mask)
        return self.res(h.shape[-1], "res_1")(h, temb, train)


class UpBlock(Blocks):
    """`CrossAttnUpBlock2D` (with `num_heads` > 0) or `UpBlock2D`: one layer per skip, the
    latest first, each on [h, skip] along the channels."""

    channels: int = 320
    num_heads: int = 0
    add_upsample: bool = True

    @nn.compact
    def __call__(self, h, skips, temb, context, mask, train):
        for j, skip in enumerate(reversed(skips)):
            h = self.res(self.channels, f"res_{j}")(jnp.concatenate([h, skip], -1), temb, train)
            if self.num_heads:
                h = self.attn(self.num_heads, f"attn_{j}")(h, context, mask)
        return upsample(h, self.dtype) if self.add_upsample else h


class TimestepEmbedding(nn.Module):
    """Linear, SiLU, Linear (diffusers' `TimestepEmbedding`)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, emb):
        emb = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(emb.astype(self.dtype))
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(emb))


class SDUNet(nn.Module):
    """Stable Diffusion's U-Net: `__call__(x, t, cond, train)` with x (B, H, W, in_channels)
    latents (H, W divisible by 2^(levels - 1)), t (B,) float timesteps (0..999 for the released
    models), and cond = {"context": (B, L, cross_attention_dim) float, "mask": None or (B, L)
    bool} (True = a context position that may be attended to; SD's pipelines attend to all 77,
    mask None). Returns (B, H, W, out_channels) float32: the epsilon or v prediction, as the
    checkpoint was trained.

    Parameters: `conv_in`, `time_embed/{linear_1, linear_2}`, `down_<level>/{res_<j>, attn_<j>,
    downsample}`, `mid/{res_0, attn_0, res_1}`, `up_<level>/{res_<j>, attn_<j>, upsample}` (up
    level 0 is the lowest resolution, as diffusers counts), `norm_out`, `conv_out`. With `remat`
    the residual and transformer blocks recompute their activations in the backward pass.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
    down_attention: Sequence[bool] = (True, True, True, False)  # CrossAttnDownBlock2D levels
    layers_per_block: int = 2
    num_heads: Sequence[int] = (8, 8, 8, 8)  # per down level; the middle has the last
    transformer_depth: int = 1
    cross_attention_dim: int = 768
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, t, cond, train: bool = False):
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"SDUNet expects {self.in_channels} input channels, got {x.shape}")
        if cond is None:
            raise ValueError("SDUNet needs cond = {'context': (B, L, D), 'mask': None or (B, L)}; "
                             "the unconditional branch of guidance is the empty prompt's context")
        context, mask = cond["context"].astype(self.dtype), cond["mask"]
        blocks = dict(groups=self.norm_num_groups, eps=self.norm_eps, dropout=self.dropout,
                      transformer_depth=self.transformer_depth, dtype=self.dtype,
                      remat=self.remat)
        levels = len(self.block_out_channels)
        heads = [n if a else 0 for n, a in zip(self.num_heads, self.down_attention)]
        c0 = self.block_out_channels[0]
        temb = TimestepEmbedding(4 * c0, self.dtype, name="time_embed")(
            timestep_embedding(t, c0, self.flip_sin_to_cos, self.freq_shift))

        h = conv(c0, 3, self.dtype, "conv_in")(x.astype(self.dtype))
        skips = [h]
        for level, ch in enumerate(self.block_out_channels):
            h, outputs = DownBlock(channels=ch, num_layers=self.layers_per_block,
                                   num_heads=heads[level], add_downsample=level < levels - 1,
                                   name=f"down_{level}", **blocks)(h, temb, context, mask, train)
            skips.extend(outputs)
        h = MidBlock(num_heads=self.num_heads[-1], name="mid", **blocks)(h, temb, context, mask,
                                                                        train)
        for level in range(levels):
            down = levels - 1 - level
            taken, skips = skips[-self.layers_per_block - 1:], skips[:-self.layers_per_block - 1]
            h = UpBlock(channels=self.block_out_channels[down], num_heads=heads[down],
                        add_upsample=level < levels - 1, name=f"up_{level}", **blocks)(
                h, taken, temb, context, mask, train)
        assert not skips

        h = nn.GroupNorm(self.norm_num_groups, epsilon=self.norm_eps, dtype=self.dtype,
                         name="norm_out")(h)
        return conv(self.out_channels, 3, self.dtype, "conv_out")(nn.silu(h)).astype(jnp.float32)

    def example_inputs(self, batch: int = 1, size: int = 8, context_length: int = 77):
        """(x, t, cond) of the shapes `__call__` takes: for `init` and `jax.eval_shape`."""
        return (jnp.zeros((batch, size, size, self.in_channels), jnp.float32),
                jnp.zeros((batch,), jnp.float32),
                {"context": jnp.zeros((batch, context_length, self.cross_attention_dim),
                                      jnp.float32), "mask": None})
