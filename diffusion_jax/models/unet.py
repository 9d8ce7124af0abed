"""The U-Net of DDPM (Ho et al. 2020, Appendix B), a PixelCNN++-style backbone.

Wide ResNet blocks with GroupNorm, a sinusoidal time embedding through a two-layer MLP
(ch -> 4 ch), self-attention at the chosen resolutions and in the middle, skip connections
from every down block to the up path. With ch 128, ch_mult (1, 2, 2, 2), 2 blocks and
attention at 16x16 on 32x32x3 images it has 35,746,307 parameters, as in the paper. The
stride-2 downsampling convolutions pad the bottom and right only (TensorFlow 'SAME', as Ho et
al.'s code and diffusers' `UNet2DModel` with `downsample_padding=0`), and GroupNorm has 32
groups at that width, so the released `google/ddpm-cifar10-32` weights run unchanged
(`diffusion_jax.importers.diffusers_unet`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.attention import SpatialTransformer, masked_mean
from diffusion_jax.models.layers import (AttnBlock, Downsample, ResnetBlock, Upsample,
                                         default_init, group_count, group_norm,
                                         rematerialized, sinusoidal_embedding, zero_init)


class UNet(nn.Module):
    """DDPM U-Net; `__call__(x, t, cond, train)` with x NHWC, t (B,) timesteps, cond (B,) labels.

    `num_classes` > 0 adds a learned label embedding to the time embedding; label
    `num_classes` is the null label used by classifier-free guidance. With `cross_attention`,
    cond is a context {"context": (B, L, D), "mask": (B, L) bool} (e.g. from a text encoder,
    `text_encoder.TextConditioned`): the attention blocks (at `attn_resolutions` and in the
    middle) become `attention.SpatialTransformer`s that also attend to it, and its masked mean
    joins the time embedding (Rombach et al. 2022, Sec. 3.3).
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    num_classes: int = 0
    out_channels: Optional[int] = None
    dtype: Any = jnp.float32
    remat: bool = False  # recompute residual blocks' activations in the backward pass
    num_groups: int = 0  # GroupNorm groups in every layer (norm_num_groups); 0: group_count
    cross_attention: bool = False
    num_heads: int = 4  # heads of the cross-attention transformer blocks
    transformer_depth: int = 1

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False):
        out_ch = self.out_channels or x.shape[-1]
        temb = sinusoidal_embedding(t, self.ch)
        temb = nn.Dense(4 * self.ch, dtype=self.dtype, kernel_init=default_init, name="temb_dense0")(temb)
        temb = nn.Dense(4 * self.ch, dtype=self.dtype, kernel_init=default_init, name="temb_dense1")(nn.silu(temb))
        if self.num_classes > 0:
            if cond is None:
                cond = jnp.full((x.shape[0],), self.num_classes, jnp.int32)
            temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, name="label_emb")(cond)
        context = mask = None
        if self.cross_attention:
            if cond is None:
                raise ValueError("a cross-attention U-Net needs a context {'context', 'mask'}")
            context, mask = cond["context"], cond["mask"]
            temb = temb + nn.Dense(4 * self.ch, dtype=self.dtype, kernel_init=default_init,
                                   name="context_emb")(masked_mean(context, mask))

        def attention(h):
            if self.cross_attention:
                return SpatialTransformer(self.num_heads, self.transformer_depth, self.dtype)(
                    h, context, mask)
            return AttnBlock(self.dtype, self.num_groups)(h)

        block = lambda ch: rematerialized(ResnetBlock, self.remat)(ch, self.dropout, self.dtype,
                                                                   self.num_groups)
        h = nn.Conv(self.ch, (3, 3), dtype=self.dtype, kernel_init=default_init, name="conv_in")(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = block(self.ch * mult)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attention(h)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(self.resamp_with_conv, self.dtype)(h)
                skips.append(h)

        h = block(h.shape[-1])(h, temb, train)
        h = attention(h)
        h = block(h.shape[-1])(h, temb, train)

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.ch * mult)(jnp.concatenate([h, skips.pop()], axis=-1), temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attention(h)
            if level != 0:
                h = Upsample(self.resamp_with_conv, self.dtype)(h)
        assert not skips

        h = nn.silu(group_norm(self.dtype, group_count(h.shape[-1], num_groups=self.num_groups))(h))
        h = nn.Conv(out_ch, (3, 3), dtype=self.dtype, kernel_init=zero_init, name="conv_out")(h)
        return h.astype(jnp.float32)
