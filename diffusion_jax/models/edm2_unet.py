"""The magnitude-preserving U-Net of EDM2 (Karras et al. 2024, Sec. 2, Fig. 21; NVlabs/edm2
`training/networks_edm2.py`), with its learned uncertainty u(sigma) (Sec. 2, Eq. 21).

The network is the raw F(x_in, c_noise[, cond]) of EDM's preconditioning: the caller passes
c_in x and c_noise = ln(sigma) / 4 (`diffusion_jax.preconditioning.EDMPrecond`, which is
NVlabs' `Precond` with sigma_data 0.5). No biases, no normalisation layers with parameters:
every convolution and linear layer is an `MPConv` with forced weight normalisation
(`mp_layers.force_weight_norm` after each optimiser step), and the branches are joined by the
magnitude-preserving sum and concatenation.

- Input: a constant-ones channel is concatenated to x.
- Embedding: MP-Fourier features of c_noise -> MPConv to `4 model_channels` (the widest level);
  with labels, mp_sum with MPConv(onehot(label) sqrt(num_classes)) at `label_balance`; MP-SiLU.
  Label `num_classes` (and cond None) is the all-zero one-hot, which is what NVlabs' `Precond`
  feeds when it gets no labels. EDM2 trains its conditional nets without label dropout and
  guides with a separately trained unconditional net (`num_classes=0`, e.g. XS-uncond), so
  the null label means something only for a net trained with label dropout.
- Blocks (`Block`): encoder blocks pixel-normalise their input (after the 1x1 skip conv when the
  width changes); the residual branch is MP-SiLU, 3x3, times (1 + MPConv(emb) emb_gain), MP-SiLU,
  dropout, 3x3, joined by mp_sum at `res_balance`; then optional cosine self-attention
  (64 channels per head) joined at `attn_balance`; activations clipped to +-256.
- Encoder: a 3x3 conv, then per level a down block (2x2 average pool) and `num_blocks` blocks;
  decoder: two blocks at the lowest resolution (the first with attention) or an up block
  (nearest neighbour), and `num_blocks + 1` blocks, each after mp_cat with the skip at
  `concat_balance`; attention in the blocks at `attn_resolutions`.
- Output: a 3x3 MPConv with the learned gain out_gain; emb_gain and out_gain start at 0, so the
  initial network outputs 0.
- u(sigma) = MPConv(MP-Fourier_128(c_noise)) (NVlabs' `Precond.logvar_fourier`,
  `logvar_linear`), returned by `__call__(..., return_logvar=True)` for the EDM2 loss
  (lambda(sigma) / e^u ||D - y||^2 + u).

The Fourier frequencies and phases are constants derived from `fourier_seed` (the noise
embedding) and `fourier_seed + 1` (u), see `mp_layers.MPFourier`. The embedding path and u run
in float32 whatever `dtype` (as NVlabs' fp16 nets do: their noise labels are float32).
Parameter and layer names follow NVlabs' state dict (`enc.64x64_block0.conv_res0.weight` is
`enc_64x64_block0/conv_res0/weight`), see `diffusion_jax.importers.edm2`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.errors import choose
from diffusion_jax.models.layers import rematerialized
from diffusion_jax.models.mp_layers import (MPConv, MPFourier, clip_activations,
                                            cosine_attention, mp_cat, mp_silu, mp_sum,
                                            pixel_norm)

Dtype = Any

PRESETS = {  # NVlabs/edm2 train_edm2.py config_presets: (model_channels, dropout)
    "xxs": (64, 0.0), "xs": (128, 0.0), "s": (192, 0.0), "m": (256, 0.10), "l": (320, 0.10),
    "xl": (384, 0.10), "xxl": (448, 0.10),
}


def preset_kwargs(size: str, num_classes: int = 1000) -> dict:
    """Constructor arguments of the EDM2 preset `size` (Karras et al. 2024, Table 2;
    `train_edm2.py`): model_channels and dropout; everything else is the default. The same
    presets serve ImageNet-512 (on 64x64x4 latents) and ImageNet-64 (64x64x3 RGB; sizes XS to
    XL): the data decides. num_classes 0 is the unconditional variant."""
    choose("EDM2 preset", size, PRESETS)
    channels, dropout = PRESETS[size]
    return dict(model_channels=channels, dropout=dropout, num_classes=num_classes)


def resample(x: jax.Array, mode: str) -> jax.Array:
    """'down': 2x2 average pooling; 'up': nearest-neighbour doubling; 'keep': x. (NVlabs'
    `resample` with its filter [1, 1].)"""
    if mode == "down":
        return nn.avg_pool(x, (2, 2), strides=(2, 2))
    if mode == "up":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x


class Block(nn.Module):
    """EDM2 encoder ('enc') or decoder ('dec') block (Fig. 21); `__call__(x, emb, train)`.

    A 1x1 `conv_skip` maps the main path to `features` when the width changes (encoder: before
    the residual branch, which then reads the projected x; decoder: when joining). Attention
    has features // channels_per_head heads, none when that is 0."""

    features: int
    flavor: str = "enc"
    resample_mode: str = "keep"
    attention: bool = False
    channels_per_head: int = 64
    dropout: float = 0.0
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: Optional[float] = 256.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        def conv(features, kernel, name):
            return MPConv(features, kernel, self.dtype, name=name)

        x = resample(x, self.resample_mode)
        skip = conv(self.features, (1, 1), "conv_skip") if x.shape[-1] != self.features else None
        if self.flavor == "enc":
            if skip is not None:
                x = skip(x)
            x = pixel_norm(x)

        y = conv(self.features, (3, 3), "conv_res0")(mp_silu(x))
        emb_gain = self.param("emb_gain", nn.initializers.zeros, ())
        c = MPConv(self.features, (), jnp.float32, name="emb_linear")(emb, gain=emb_gain) + 1
        y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = conv(self.features, (3, 3), "conv_res1")(y)

        if self.flavor == "dec" and skip is not None:
            x = skip(x)
        x = mp_sum(x, y, self.res_balance)

        num_heads = self.features // self.channels_per_head if self.attention else 0
        if num_heads:
            y = cosine_attention(conv(3 * self.features, (1, 1), "attn_qkv")(x), num_heads)
            x = mp_sum(x, conv(self.features, (1, 1), "attn_proj")(y), self.attn_balance)
        return clip_activations(x, self.clip_act)


class EDM2UNet(nn.Module):
    """EDM2 U-Net; `__call__(x, t, cond=None, train=False, return_logvar=False)` with x NHWC
    (c_in x), t (B,) = c_noise, cond (B,) int labels or None; returns F (B, H, W, C) float32,
    or (F, u) with u (B,) the log-variance when `return_logvar`.

    Defaults are NVlabs' `UNet` (model_channels 192 is EDM2-S); `preset_kwargs` gives the
    paper's sizes. `channel_mult_noise` / `channel_mult_emb` (None: channel_mult[0] /
    max(channel_mult)) set the Fourier and embedding widths in units of model_channels."""

    model_channels: int = 192
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    channel_mult_noise: Optional[int] = None
    channel_mult_emb: Optional[int] = None
    num_blocks: int = 3
    attn_resolutions: Sequence[int] = (16, 8)
    num_classes: int = 0
    label_balance: float = 0.5
    concat_balance: float = 0.5
    res_balance: float = 0.3
    attn_balance: float = 0.3
    channels_per_head: int = 64
    dropout: float = 0.0
    clip_act: Optional[float] = 256.0
    logvar_channels: int = 128
    fourier_seed: int = 0
    out_channels: Optional[int] = None
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute the blocks' activations in the backward pass

    def _embed(self, t, cond):
        """mp_silu(mp_sum(MPConv(MPFourier(c_noise)), MPConv(onehot sqrt(L)))), float32."""
        mc = self.model_channels
        c_noise = mc * (self.channel_mult_noise or self.channel_mult[0])
        c_emb = mc * (self.channel_mult_emb or max(self.channel_mult))
        emb = MPFourier(c_noise, self.fourier_seed, name="emb_fourier")(t)
        emb = MPConv(c_emb, (), jnp.float32, name="emb_noise")(emb)
        if self.num_classes:
            if cond is None:
                cond = jnp.full((t.shape[0],), self.num_classes, jnp.int32)
            onehot = jax.nn.one_hot(cond, self.num_classes) * math.sqrt(self.num_classes)
            label = MPConv(c_emb, (), jnp.float32, name="emb_label")(onehot)
            emb = mp_sum(emb, label, self.label_balance)
        return mp_silu(emb)

    def _logvar(self, t):
        """u(sigma) = MPConv(MPFourier(c_noise)) (B,), float32 (Eq. 21)."""
        u = MPFourier(self.logvar_channels, self.fourier_seed + 1, name="logvar_fourier")(t)
        return MPConv(1, (), jnp.float32, name="logvar_linear")(u)[:, 0]

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False, return_logvar: bool = False):
        t = jnp.asarray(t, jnp.float32)
        out_ch = self.out_channels or x.shape[-1]
        emb = self._embed(t, cond)

        def block(x, features, name, **kwargs):
            cls = rematerialized(Block, self.remat)
            return cls(features, channels_per_head=self.channels_per_head, dropout=self.dropout,
                       res_balance=self.res_balance, attn_balance=self.attn_balance,
                       clip_act=self.clip_act, dtype=self.dtype, name=name, **kwargs)(x, emb, train)

        x = x.astype(self.dtype)
        x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)
        skips = []
        for level, mult in enumerate(self.channel_mult):
            res = x.shape[1] if level == 0 else x.shape[1] // 2
            tag, features = f"enc_{res}x{res}", self.model_channels * mult
            if level == 0:
                x = MPConv(features, (3, 3), self.dtype, name=f"{tag}_conv")(x)
            else:
                x = block(x, x.shape[-1], f"{tag}_down", resample_mode="down")
            skips.append(x)
            for idx in range(self.num_blocks):
                x = block(x, features, f"{tag}_block{idx}", attention=res in self.attn_resolutions)
                skips.append(x)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            lowest = level == len(self.channel_mult) - 1
            res = x.shape[1] if lowest else 2 * x.shape[1]
            tag, features = f"dec_{res}x{res}", self.model_channels * mult
            if lowest:
                x = block(x, x.shape[-1], f"{tag}_in0", flavor="dec", attention=True)
                x = block(x, x.shape[-1], f"{tag}_in1", flavor="dec")
            else:
                x = block(x, x.shape[-1], f"{tag}_up", flavor="dec", resample_mode="up")
            for idx in range(self.num_blocks + 1):
                x = mp_cat(x, skips.pop(), self.concat_balance)
                x = block(x, features, f"{tag}_block{idx}", flavor="dec",
                          attention=res in self.attn_resolutions)

        out_gain = self.param("out_gain", nn.initializers.zeros, ())
        x = MPConv(out_ch, (3, 3), self.dtype, name="out_conv")(x, gain=out_gain)
        x = x.astype(jnp.float32)
        if return_logvar:
            return x, self._logvar(t)
        if self.is_initializing():
            self._logvar(t)
        return x
