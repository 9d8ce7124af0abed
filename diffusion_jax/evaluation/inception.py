"""Inception-v3 as used for FID and the Inception Score: the TensorFlow graph of 2015-12-05
(Szegedy et al. 2016, "Rethinking the Inception Architecture"; FID: Heusel et al. 2017; IS:
Salimans et al. 2016), in the form pytorch-fid rebuilds it (`FIDInceptionA`, `C`, `E_1`, `E_2`).

It differs from torchvision's Inception-v3 in three ways that change the numbers: the 3x3
average pools of the A, C and first E blocks exclude the padding from the mean
(`count_include_pad=False`), the last E block (Mixed_7c) max-pools instead, and the classifier
has 1008 outputs. Layer names follow torchvision/pytorch-fid (`Conv2d_1a_3x3`,
`Mixed_5b/branch1x1`, ...) so `tools/convert_inception_weights.py` maps pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` one to one. Weights are not shipped and nothing is
downloaded: the config key `eval.inception_weights` names the converted `.npz`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion_jax.evaluation.features import batched_feature_fn
from diffusion_jax.weight_files import load_variables, save_variables
from diffusion_jax.parallel import DATA_AXIS

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
WEIGHTS_CONFIG_KEY = "eval.inception_weights"
PROTOCOLS = ("tensorflow", "pytorch_fid")


class BasicConv2d(nn.Module):
    """Convolution without bias -> BatchNorm (inference mode, eps 1e-3) -> ReLU."""
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Sequence[int] = (0, 0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, tuple(self.kernel_size), strides=tuple(self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    """TensorFlow's 3x3 average pool with SAME padding: padded zeros are not counted."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int):
    padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
    """Mixed_5b/c/d (`FIDInceptionA`)."""
    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)  # noqa: E731
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)  # noqa: E731
        b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b/c/d/e (`FIDInceptionC`), factorised 7x7 convolutions."""
    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)  # noqa: E731
        c7 = self.channels_7x7
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)  # noqa: E731
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (`FIDInceptionE_1`, average pool without padding) and Mixed_7c
    (`FIDInceptionE_2`, 3x3 max pool: a quirk of the 2015 graph that FID keeps)."""
    max_pool: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)  # noqa: E731
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool_3x3(x, 1) if self.max_pool else _avg_pool_3x3(x)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
    """The graph's `softmax/logits` layer, pool3 (2048) -> 1008, computed in float32.

    Without `output_bias` the logits are pool3 @ W, as the Inception Score reference code
    computes them (improved-gan `inception_score/model.py`, guided-diffusion's evaluator); the
    bias is kept in the weights for the `output_bias=True` variant, the graph's own logits.
    """
    output_bias: bool = False

    @nn.compact
    def __call__(self, pool3):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (FEATURE_DIM, NUM_LOGITS))
        bias = self.param("bias", nn.initializers.zeros, (NUM_LOGITS,))
        logits = jnp.dot(pool3, kernel, precision=jax.lax.Precision.HIGHEST)
        return logits + bias if self.output_bias else logits


class FIDInceptionV3(nn.Module):
    """(B, 299, 299, 3) network input (see `preprocess`) -> (pool3 (B, 2048), logits (B, 1008)),
    both float32 whatever the compute `dtype`; parameters are float32."""
    dtype: Any = jnp.float32
    output_bias: bool = False

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)  # noqa: E731
        x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x)
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x)
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x)
        x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)
        x = InceptionC(128, dtype=self.dtype, name="Mixed_6b")(x)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6c")(x)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6d")(x)
        x = InceptionC(192, dtype=self.dtype, name="Mixed_6e")(x)
        x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, dtype=self.dtype, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, dtype=self.dtype, name="Mixed_7c")(x)
        pool3 = x.astype(jnp.float32).mean(axis=(1, 2))
        return pool3, Classifier(self.output_bias, name="fc")(pool3)


def _resize_bilinear_axis(x: jax.Array, axis: int, size: int, half_pixel_centers: bool):
    """Bilinear resampling of one axis without antialiasing, source coordinate
    (j + 1/2) n / size - 1/2 (half-pixel centres) or j n / size (TensorFlow 1 `ResizeBilinear`,
    align_corners=False), clamped to the edge pixels."""
    n = x.shape[axis]
    j = np.arange(size, dtype=np.float64)
    source = (j + 0.5) * n / size - 0.5 if half_pixel_centers else j * n / size
    source = np.clip(source, 0.0, n - 1)
    lower = np.floor(source).astype(np.int32)
    upper = np.minimum(lower + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    weight = jnp.asarray((source - lower).reshape(shape), x.dtype)
    x_lower, x_upper = jnp.take(x, lower, axis=axis), jnp.take(x, upper, axis=axis)
    return x_lower + (x_upper - x_lower) * weight


def preprocess(images: jax.Array, protocol: str = "tensorflow", size: int = INPUT_SIZE) -> jax.Array:
    """Generated images (B, H, W, C) in [-1, 1], C = 1 or 3 -> network input (B, size, size, 3).

    The FID/IS input protocol, in order:
      1. quantise as the images would be saved: v = clip(round(127.5 (x + 1)), 0, 255), uint8
         values (one channel is repeated to three);
      2. resize to 299x299 bilinearly, without antialiasing, on the float values v;
      3. scale to the network's range.
    `protocol="tensorflow"` (default) is the 2015 graph fed uint8 images, as TTUR's FID code,
    improved-gan's IS code and NVlabs' metrics (EDM) run it: the graph's `ResizeBilinear`
    (align_corners=False, no half-pixel centres: source pixel j H / 299) and (v - 128) / 128.
    `protocol="pytorch_fid"` is pytorch-fid's path: `F.interpolate(bilinear,
    align_corners=False)` (half-pixel centres) and 2 v / 255 - 1. The two differ slightly in
    FID; compare numbers only under one protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    images = jnp.asarray(images, jnp.float32)
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 1 or 3); got shape {images.shape}")
    v = jnp.clip(jnp.round(127.5 * (images + 1.0)), 0.0, 255.0)
    half_pixel_centers = protocol == "pytorch_fid"
    v = _resize_bilinear_axis(v, 1, size, half_pixel_centers)
    v = _resize_bilinear_axis(v, 2, size, half_pixel_centers)
    return (v - 128.0) / 128.0 if protocol == "tensorflow" else v / 255.0 * 2.0 - 1.0


def save_inception_params(path, variables) -> None:
    """Writes {'params', 'batch_stats'} to a flat `.npz` (see `features.flatten_variables`)."""
    save_variables(path, variables)


def load_inception_params(path) -> dict:
    """Reads the variables written by `save_inception_params` or the converter."""
    return load_variables(
        path, f"Inception-v3 FID weights not found: set the config key {WEIGHTS_CONFIG_KEY} to "
              "an .npz made by tools/convert_inception_weights.py from pytorch-fid's "
              "pt_inception-2015-12-05-6726825d.pth")


def inception_feature_fn(path, batch_size: int = 100, mesh: Mesh | None = None,
                         data_axis: str = DATA_AXIS, dtype: Any = jnp.float32,
                         protocol: str = "tensorflow", output_bias: bool = False):
    """Returns `fn(images (N, H, W, C) in [-1, 1]) -> (pool3 (N, 2048), logits (N, 1008))` as
    numpy float32 arrays: `preprocess` and the network in one jitted program per batch of
    `batch_size`, split over `mesh`'s `data_axis` when a mesh is given (params replicated)."""
    variables = load_inception_params(path)
    model = FIDInceptionV3(dtype=dtype, output_bias=output_bias)
    return batched_feature_fn(lambda v, x: model.apply(v, preprocess(x, protocol)), variables,
                              batch_size, mesh, data_axis)
