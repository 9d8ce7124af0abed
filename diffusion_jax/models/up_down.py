"""FIR up- and down-sampling and the fused resampling convolutions of StyleGAN2 used by NCSN++.

Song et al. 2021 (score SDE, Appendix H.1) resample with the FIR filter [1, 3, 3, 1] of
Karras et al. 2020 (StyleGAN2, Appendix B): `upsample_2d` and `downsample_2d` are upfirdn2d
with the separable filter k k^T / sum(k)^2 (times factor^2 when upsampling, so a constant
image stays constant). The filter [1, 1] gives nearest-neighbour upsampling and 2x2 average
pooling. `Conv2d(up=True)` and `Conv2d(down=True)` fuse the resampling with a convolution
(pad once, then a transposed or strided convolution). Arrays are NHWC.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.layers import default_init

Dtype = Any

_DIMS = ("NHWC", "HWIO", "NHWC")


def fir_kernel_2d(k: Sequence[float], gain: float = 1.0) -> np.ndarray:
    """The separable 2-D filter outer(k, k) / sum(k)^2 * gain."""
    k = np.asarray(k, dtype=np.float32)
    return np.outer(k, k) / np.sum(k) ** 2 * gain


def upfirdn2d(x: jax.Array, kernel: np.ndarray, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """Upsample by zero insertion, pad, convolve each channel with `kernel`, keep every `down`-th pixel.

    The semantics of StyleGAN2's upfirdn2d: after upsampling a row of n pixels has n * up
    entries (trailing zeros included), then `pad` = (before, after) zeros on both spatial axes.
    """
    channels = x.shape[-1]
    # lax dilation leaves out the trailing up - 1 zeros; add them to the padding after.
    padding = [(pad[0], pad[1] + up - 1)] * 2
    w = jnp.asarray(kernel[::-1, ::-1], x.dtype)[:, :, None, None]
    w = jnp.tile(w, (1, 1, 1, channels))
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(down, down), padding=padding, lhs_dilation=(up, up),
        dimension_numbers=_DIMS, feature_group_count=channels)


def upsample_2d(x: jax.Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> jax.Array:
    """FIR upsampling by `factor` (StyleGAN2 `upsample_2d`): (B, H, W, C) -> (B, 2H, 2W, C)."""
    kernel = fir_kernel_2d(k, gain=factor ** 2)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: jax.Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> jax.Array:
    """FIR downsampling by `factor` (StyleGAN2 `downsample_2d`): (B, H, W, C) -> (B, H/2, W/2, C)."""
    kernel = fir_kernel_2d(k)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: jax.Array, w: jax.Array, k: Sequence[float] = (1, 3, 3, 1),
                     factor: int = 2) -> jax.Array:
    """Fused `upsample_2d` then convolution with `w` (HWIO): a transposed convolution, then the FIR."""
    ksize = w.shape[0]
    x = jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=[(ksize - 1, ksize - 1)] * 2,
        lhs_dilation=(factor, factor), dimension_numbers=_DIMS)
    kernel = fir_kernel_2d(k, gain=factor ** 2)
    p = (kernel.shape[0] - factor) - (ksize - 1)
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: jax.Array, w: jax.Array, k: Sequence[float] = (1, 3, 3, 1),
                       factor: int = 2) -> jax.Array:
    """Fused convolution with `w` (HWIO) then `downsample_2d`: the FIR, then a strided convolution."""
    ksize = w.shape[0]
    kernel = fir_kernel_2d(k)
    p = (kernel.shape[0] - factor) + (ksize - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return jax.lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding="VALID",
                                        dimension_numbers=_DIMS)


class Conv2d(nn.Module):
    """Convolution with an optional fused FIR 2x up- or down-sampling (StyleGAN2, Appendix B)."""

    features: int
    kernel_size: int = 3
    up: bool = False
    down: bool = False
    resample_kernel: Sequence[float] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Callable = default_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        assert not (self.up and self.down) and self.kernel_size % 2 == 1
        w = self.param("kernel", self.kernel_init,
                       (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        if self.up:
            x = upsample_conv_2d(x, w, self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, self.resample_kernel)
        else:
            pad = self.kernel_size // 2
            x = jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=_DIMS)
        if self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return x


class Upsample(nn.Module):
    """NCSN++ 2x upsampling (Song et al. 2021): FIR or nearest-neighbour, with an optional 3x3 conv.

    With `fir` and a convolution the two are fused (`Conv2d(up=True)`); without `fir` the
    convolution follows nearest-neighbour upsampling.
    """

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        out_ch = self.out_ch or x.shape[-1]
        if self.fir and self.with_conv:
            return Conv2d(out_ch, 3, up=True, resample_kernel=self.fir_kernel, dtype=self.dtype)(x)
        x = upsample_2d(x, self.fir_kernel if self.fir else (1, 1))
        if self.with_conv:
            x = nn.Conv(out_ch, (3, 3), dtype=self.dtype, kernel_init=default_init)(x)
        return x


class Downsample(nn.Module):
    """NCSN++ 2x downsampling (Song et al. 2021): FIR or average pooling, or a strided 3x3 conv.

    With `fir` and a convolution the two are fused (`Conv2d(down=True)`); without `fir` the
    convolution is a stride-2 3x3 convolution on the input padded by one pixel at the bottom
    and right, as in the reference implementation.
    """

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        out_ch = self.out_ch or x.shape[-1]
        if not self.with_conv:
            return downsample_2d(x, self.fir_kernel if self.fir else (1, 1))
        if self.fir:
            return Conv2d(out_ch, 3, down=True, resample_kernel=self.fir_kernel, dtype=self.dtype)(x)
        return nn.Conv(out_ch, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), dtype=self.dtype,
                       kernel_init=default_init)(x)
