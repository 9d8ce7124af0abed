"""NCSN++ and DDPM++ (Song et al. 2021, score SDE, Appendix H) and EDM's SongUNet settings.

One U-Net family covers both papers. Score SDE builds DDPM++ (BigGAN residual blocks,
skip_rescale, positional embedding, no FIR) and NCSN++ (additionally FIR resampling,
a residual input pyramid and Gaussian Fourier features of log sigma). EDM (Karras et al. 2022,
Appendix F) re-implements both as `SongUNet`; it is the same graph with three
resolutions, channel multipliers (2, 2, 2), the attention q/k/v initialised at 0.2 of the
default variance, and the noise label c_noise embedded as given. EDM's 'skip' encoder and
decoder are progressive_input='input_skip' with progressive_combine='sum' and
progressive='output_skip'; its 'residual' encoder is progressive_input='residual'.
With `cross_attention` the net is text-conditional as the U-Net of `unet.py` is.

The `*_kwargs` functions return the constructor arguments of the paper settings.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.attention import SpatialTransformer, masked_mean
from diffusion_jax.models.layers import default_init, rematerialized, sinusoidal_embedding
from diffusion_jax.models.up_down import Downsample, Upsample, downsample_2d, upsample_2d

Dtype = Any


def scaled_init(scale: float):
    """DDPM's initialiser with variance `scale`; score SDE maps init_scale 0 to 1e-10."""
    return nn.initializers.variance_scaling(scale or 1e-10, "fan_avg", "uniform")


def group_norm(channels: int, dtype: Dtype, name: Optional[str] = None) -> nn.GroupNorm:
    """GroupNorm with min(channels / 4, 32) groups and eps 1e-6, as in NCSN++ and SongUNet."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), epsilon=1e-6, dtype=dtype, name=name)


def conv3x3(features: int, dtype: Dtype, init_scale: float = 1.0, name: Optional[str] = None) -> nn.Conv:
    return nn.Conv(features, (3, 3), dtype=dtype, kernel_init=scaled_init(init_scale), name=name)


def conv1x1(features: int, dtype: Dtype, init_scale: float = 1.0, name: Optional[str] = None) -> nn.Conv:
    return nn.Conv(features, (1, 1), dtype=dtype, kernel_init=scaled_init(init_scale), name=name)


def _merge(a, b, skip_rescale: bool):
    """a + b, divided by sqrt(2) with skip_rescale (Song et al. 2021, Appendix H.1)."""
    return (a + b) / math.sqrt(2.0) if skip_rescale else a + b


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi W x), cos(2 pi W x)], W ~ N(0, scale^2) frozen.

    Tancik et al. 2020, used for the noise level by Song et al. 2021 (Appendix H.1). W is a
    parameter (counted, checkpointed) behind a stop-gradient, so training never changes it;
    exclude it from weight decay.
    """

    embedding_size: int = 256
    scale: float = 16.0

    @nn.compact
    def __call__(self, x):
        w = self.param("W", nn.initializers.normal(self.scale), (self.embedding_size,))
        x_proj = x.astype(jnp.float32)[:, None] * jax.lax.stop_gradient(w)[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class AttnBlockpp(nn.Module):
    """Single-head self-attention over pixels with a residual (Song et al. 2021; DDPM's block).

    q, k, v and the output are 1x1 projections; the output projection starts at `init_scale`
    and the residual sum is divided by sqrt(2) with `skip_rescale`. EDM initialises the q/k/v
    projection with variance 0.2 (`qkv_init_scale`).
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    qkv_init_scale: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = group_norm(c, self.dtype)(x)
        qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=scaled_init(self.qkv_init_scale), name="qkv")(h)
        q, k, v = jnp.split(qkv.reshape(b, hgt * wid, 1, 3 * c), 3, axis=-1)
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, hgt, wid, c)
        h = nn.Dense(c, dtype=self.dtype, kernel_init=scaled_init(self.init_scale), name="proj_out")(h)
        return _merge(x, h, self.skip_rescale)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM's residual block with skip_rescale and a near-zero last conv (Song et al. 2021, H.1).

    `emb` is the activated noise embedding SiLU(temb) (or None for an unconditional net).
    """

    out_ch: Optional[int] = None
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        h = nn.silu(group_norm(in_ch, self.dtype)(x))
        h = conv3x3(out_ch, self.dtype)(h)
        if emb is not None:
            h = h + nn.Dense(out_ch, dtype=self.dtype, kernel_init=default_init)(emb)[:, None, None, :]
        h = nn.silu(group_norm(out_ch, self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, self.dtype, self.init_scale)(h)
        if in_ch != out_ch:
            x = conv1x1(out_ch, self.dtype, name="nin_shortcut")(x)
        return _merge(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block that can resample (Brock et al. 2019; Song et al. 2021, H.1).

    GN, SiLU, [up/down], conv3x3, + Dense(emb), GN, SiLU, dropout, conv3x3; the skip path is
    resampled the same way and mapped by a 1x1 conv when the channels change or it resamples.
    `resample_kernel` (1, 1) is nearest-neighbour / average pooling, (1, 3, 3, 1) the FIR.
    This is also EDM's `UNetBlock` with resample_proj and without adaptive scale.
    """

    out_ch: Optional[int] = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    resample_kernel: Sequence[float] = (1, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        h = nn.silu(group_norm(in_ch, self.dtype)(x))
        if self.up:
            h, x = upsample_2d(h, self.resample_kernel), upsample_2d(x, self.resample_kernel)
        elif self.down:
            h, x = downsample_2d(h, self.resample_kernel), downsample_2d(x, self.resample_kernel)
        h = conv3x3(out_ch, self.dtype)(h)
        if emb is not None:
            h = h + nn.Dense(out_ch, dtype=self.dtype, kernel_init=default_init)(emb)[:, None, None, :]
        h = nn.silu(group_norm(out_ch, self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, self.dtype, self.init_scale)(h)
        if in_ch != out_ch or self.up or self.down:
            x = conv1x1(out_ch, self.dtype, name="skip")(x)
        return _merge(x, h, self.skip_rescale)


class Combine(nn.Module):
    """Combine the input pyramid with the features: 1x1 conv of the pyramid, then sum or concat."""

    method: str = "cat"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pyramid, h):
        p = conv1x1(h.shape[-1], self.dtype)(pyramid)
        return jnp.concatenate([p, h], axis=-1) if self.method == "cat" else p + h


_CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("positional", "fourier"),
}


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net; `__call__(x, t, cond, train)`, x NHWC, t (B,) noise conditioning.

    t is embedded as given (positional: e.g. 999 t for VP, EDM's c_noise), or as log t with
    `embed_log_t` (score SDE's Fourier features of log sigma). `scale_by_sigma` divides the
    output by t, so t must then be sigma. `num_classes` > 0 adds a label embedding to the
    noise embedding (before the embedding MLP, as in EDM); label `num_classes` is the null
    label for classifier-free guidance. `centered=False` maps data in [0, 1] to [-1, 1] first.
    With `cross_attention`, cond is a context {"context": (B, L, D), "mask": (B, L) bool}
    (`text_encoder.TextConditioned`): the attention blocks (at `attn_resolutions` and in the
    middle) become `attention.SpatialTransformer`s that also attend to it, and a Dense of its
    masked mean joins the noise embedding after the embedding MLP (Rombach et al. 2022,
    Sec. 3.3), as in `unet.UNet`.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resblock_type: str = "biggan"
    fir: bool = False
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resamp_with_conv: bool = True
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    embed_log_t: bool = False
    conditional: bool = True
    scale_by_sigma: bool = False
    centered: bool = True
    init_scale: float = 0.0
    qkv_init_scale: float = 1.0
    num_classes: int = 0
    out_channels: Optional[int] = None
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute residual blocks' activations in the backward pass
    cross_attention: bool = False
    num_heads: int = 4  # heads of the cross-attention transformer blocks
    transformer_depth: int = 1

    def _check(self):
        for field, valid in _CHOICES.items():
            if getattr(self, field) not in valid:
                raise ValueError(f"{field}={getattr(self, field)!r}; valid: {', '.join(valid)}")
        if self.num_classes > 0 and not self.conditional:
            raise ValueError("num_classes > 0 needs conditional=True (labels join the noise embedding)")
        if self.cross_attention and not self.conditional:
            raise ValueError("cross_attention needs conditional=True (the pooled context joins the "
                             "noise embedding)")

    def _embed(self, t, cond):
        """Noise embedding -> (label embedding added) -> Dense, SiLU, Dense (-> Dense of the pooled
        context added); returns SiLU(temb)."""
        s = jnp.log(t) if self.embed_log_t else t
        if self.embedding_type == "fourier":
            temb = GaussianFourierProjection(self.nf, self.fourier_scale, name="fourier_proj")(s)
        else:
            temb = sinusoidal_embedding(s, self.nf)
        if self.num_classes > 0:
            if cond is None:
                cond = jnp.full((t.shape[0],), self.num_classes, jnp.int32)
            temb = temb + nn.Embed(self.num_classes + 1, temb.shape[-1], name="label_emb")(cond)
        temb = nn.Dense(4 * self.nf, dtype=self.dtype, kernel_init=default_init, name="temb_dense0")(temb)
        temb = nn.Dense(4 * self.nf, dtype=self.dtype, kernel_init=default_init, name="temb_dense1")(nn.silu(temb))
        if self.cross_attention:
            temb = temb + nn.Dense(4 * self.nf, dtype=self.dtype, kernel_init=default_init,
                                   name="context_emb")(masked_mean(cond["context"], cond["mask"]))
        return nn.silu(temb)

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False):
        self._check()
        if self.cross_attention and cond is None:
            raise ValueError("a cross-attention NCSN++ needs a context {'context', 'mask'}")
        out_ch = self.out_channels or x.shape[-1]
        dt = self.dtype
        t = jnp.asarray(t, jnp.float32)
        emb = self._embed(t, cond) if self.conditional else None
        fir_kw = dict(fir=self.fir, fir_kernel=self.fir_kernel, dtype=dt)

        def resblock(ch=None, up=False, down=False):
            if self.resblock_type == "ddpm":
                return rematerialized(ResnetBlockDDPMpp, self.remat)(
                    ch, self.dropout, self.skip_rescale, self.init_scale, dt)
            kernel = self.fir_kernel if self.fir else (1, 1)
            return rematerialized(ResnetBlockBigGANpp, self.remat)(
                ch, up, down, self.dropout, kernel, self.skip_rescale, self.init_scale, dt)

        def attn(h):
            if self.cross_attention:
                return SpatialTransformer(self.num_heads, self.transformer_depth, dt)(
                    h, cond["context"], cond["mask"])
            return AttnBlockpp(self.skip_rescale, self.init_scale, self.qkv_init_scale, dt)(h)

        if not self.centered:
            x = 2 * x - 1
        x = x.astype(dt)
        input_pyramid = x
        hs = [conv3x3(self.nf, dt, name="conv_in")(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = resblock(self.nf * mult)(hs[-1], emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                if self.resblock_type == "ddpm":
                    h = Downsample(with_conv=self.resamp_with_conv, **fir_kw)(hs[-1])
                else:
                    h = resblock(down=True)(hs[-1], emb, train)
                if self.progressive_input == "input_skip":
                    input_pyramid = Downsample(with_conv=False, **fir_kw)(input_pyramid)
                    h = Combine(self.progressive_combine, dt)(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = Downsample(h.shape[-1], with_conv=True, **fir_kw)(input_pyramid)
                    h = input_pyramid = _merge(input_pyramid, h, self.skip_rescale)
                hs.append(h)

        h = resblock()(hs[-1], emb, train)
        h = attn(h)
        h = resblock()(h, emb, train)

        pyramid = None
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = resblock(self.nf * mult)(jnp.concatenate([h, hs.pop()], axis=-1), emb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attn(h)
            if self.progressive == "output_skip":
                p = conv3x3(out_ch, dt, self.init_scale)(nn.silu(group_norm(h.shape[-1], dt)(h)))
                pyramid = p if pyramid is None else Upsample(with_conv=False, **fir_kw)(pyramid) + p
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = conv3x3(h.shape[-1], dt)(nn.silu(group_norm(h.shape[-1], dt)(h)))
                else:
                    pyramid = Upsample(h.shape[-1], with_conv=True, **fir_kw)(pyramid)
                    h = pyramid = _merge(pyramid, h, self.skip_rescale)
            if level != 0:
                if self.resblock_type == "ddpm":
                    h = Upsample(with_conv=self.resamp_with_conv, **fir_kw)(h)
                else:
                    h = resblock(up=True)(h, emb, train)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = nn.silu(group_norm(h.shape[-1], dt, name="norm_out")(h))
            h = conv3x3(out_ch, dt, self.init_scale, name="conv_out")(h)
        h = h.astype(jnp.float32)
        if self.scale_by_sigma:
            h = h / t[:, None, None, None]
        return h


def ddpmpp_cifar10_kwargs(deep: bool = False) -> dict:
    """DDPM++ cont. (VP / sub-VP) on CIFAR-10 (Song et al. 2021, Table 3; configs/vp/
    cifar10_ddpmpp[_deep]_continuous.py): 61,804,419 parameters, deep 106,632,579.
    Condition on t as 999 t (positional embedding)."""
    return dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8 if deep else 4, attn_resolutions=(16,),
                dropout=0.1, resblock_type="biggan", fir=False, skip_rescale=True, resamp_with_conv=True,
                progressive="none", progressive_input="none", progressive_combine="sum",
                embedding_type="positional", conditional=True, scale_by_sigma=False, init_scale=0.0)


def ncsnpp_cifar10_kwargs(continuous: bool = True, deep: bool = False) -> dict:
    """NCSN++ (VE) on CIFAR-10 (Song et al. 2021, Table 3; configs/ve/cifar10_ncsnpp[_deep]
    [_continuous].py): discrete 62,693,251, continuous 62,758,915, deep continuous 107,587,075
    parameters. t is sigma (the output is divided by it); the continuous nets embed log sigma
    with Fourier features of scale 16. The discrete net embeds t positionally, whereas the
    reference embeds the noise-level index i and divides by sigma_i."""
    return dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8 if deep else 4, attn_resolutions=(16,),
                dropout=0.1, resblock_type="biggan", fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
                resamp_with_conv=True, progressive="none", progressive_input="residual",
                progressive_combine="sum", embedding_type="fourier" if continuous else "positional",
                fourier_scale=16.0, embed_log_t=continuous, conditional=True, scale_by_sigma=True,
                init_scale=0.0)


def edm_ddpmpp_cifar10_kwargs() -> dict:
    """EDM's DDPM++ (SongUNet, Karras et al. 2022, Appendix F, Table 7; `train.py --arch=ddpmpp`):
    128 channels, multipliers (2, 2, 2), 4 blocks, attention at 16, filter [1, 1], dropout 0.13
    (CIFAR-10): 55.73M parameters. t is c_noise."""
    return dict(nf=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.13,
                resblock_type="biggan", fir=False, skip_rescale=True, progressive="none",
                progressive_input="none", embedding_type="positional", conditional=True,
                scale_by_sigma=False, init_scale=0.0, qkv_init_scale=0.2)


def edm_ncsnpp_cifar10_kwargs() -> dict:
    """EDM's NCSN++ (SongUNet, `train.py --arch=ncsnpp`), also the consistency-models CIFAR-10
    net: as DDPM++ with Fourier features of c_noise (scale 16), a residual input pyramid and
    the FIR [1, 3, 3, 1]: 56,395,651 parameters. t is c_noise."""
    return dict(edm_ddpmpp_cifar10_kwargs(), fir=True, fir_kernel=(1, 3, 3, 1),
                progressive_input="residual", embedding_type="fourier", fourier_scale=16.0)
