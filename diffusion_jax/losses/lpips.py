"""LPIPS, the learned perceptual distance of Zhang et al. 2018 ("The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric"), VGG-16 variant with the v0.1 "lin" layers, as the lpips
package (`lpips.LPIPS(net='vgg', version='0.1')`) computes it in eval mode.

Consistency models (Song et al. 2023) use it as the training distance d(x, y) on CIFAR-10, with
the 32x32 images upsampled bilinearly to 224x224 before the network (`lpips_distance_fn`'s
default `resize_to=224`).

For NHWC images x, y in [-1, 1]:
  1. scaling layer: (x - shift) / scale, shift = [-.030, -.088, -.188], scale = [.458, .448, .450]
     per RGB channel (v0.1; v0.0 had no scaling);
  2. VGG-16 `features` trunk (torchvision layout: 13 3x3 convolutions with padding 1, each
     followed by ReLU, 2x2 max-pools of stride 2 between the blocks); taps relu1_2, relu2_2,
     relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 channels; the trunk's last max-pool is
     not used);
  3. per tap l: unit-normalise over channels, f / (||f||_2 + 1e-10), square the difference of
     the two images' normalised features, apply the 1x1 convolution "lin_l" (C_l -> 1, no bias,
     non-negative weights; the reference's dropout before it is off in eval mode) and average
     over the spatial positions;
  4. sum over the five taps -> one distance per example, (B,).

Parameters follow the module tree {'features': {'conv1_1'...'conv5_3': {kernel, bias}},
'lin0'...'lin4': {kernel}}; `tools/convert_lpips_weights.py` maps torchvision's VGG-16 and the
lpips package's lin weights onto it. Weights are not shipped and nothing is downloaded: the
config key `consistency.lpips_weights` names the converted `.npz`.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.weight_files import flatten_variables, load_variables, save_variables

WEIGHTS_CONFIG_KEY = "consistency.lpips_weights"
INPUT_SIZE = 224
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
# (block, convolutions) of VGG-16; each block ends in a tap, blocks 2-5 start with a max-pool
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
TAP_CHANNELS = tuple(channels for channels, _ in VGG16_BLOCKS)
CONV_NAMES = tuple(f"conv{block + 1}_{i + 1}" for block, (_, n) in enumerate(VGG16_BLOCKS)
                   for i in range(n))
MIN_SIZE = 16  # four 2x2 pools: relu5_3 needs at least one position

_MAKE_FILE = ("an .npz made by `python tools/convert_lpips_weights.py vgg16-397923af.pth "
              "vgg.pth lpips_vgg16.npz` from torchvision's VGG-16 weights and the lpips "
              "package's lpips/weights/v0.1/vgg.pth")


def scaling_layer(x: jax.Array) -> jax.Array:
    """LPIPS v0.1 `ScalingLayer`: (x - shift) / scale per RGB channel, for x in [-1, 1]."""
    return (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)


def normalize_channels(f: jax.Array, eps: float = EPS) -> jax.Array:
    """f / (||f||_2 over the last (channel) axis + eps), the reference `normalize_tensor`.

    The norm is written so that its gradient at an all-zero feature vector (a position where
    every ReLU is off) is 0 rather than NaN; the value is the reference's everywhere.
    """
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return f / (norm + eps)


def _nonnegative_init(key, shape, dtype=jnp.float32):
    """Uniform in [0, 2 / fan_in): random lin weights that keep the distance a sum of
    non-negative terms, as trained LPIPS weights are (the reference clamps them at 0)."""
    fan_in = int(np.prod(shape[:-1]))
    return jax.random.uniform(key, shape, dtype) * (2.0 / fan_in)


class VGG16Features(nn.Module):
    """torchvision's VGG-16 `features` up to relu5_3: (B, H, W, 3) network input (already
    scaled) -> the 5 taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) in the compute `dtype`;
    parameters float32. H and W must be at least 16 (max-pools floor odd sizes, as torch's)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        taps = []
        names = iter(CONV_NAMES)
        x = x.astype(self.dtype)
        for block, (channels, convs) in enumerate(VGG16_BLOCKS):
            if block:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for _ in range(convs):
                x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            name=next(names))(x)
                x = nn.relu(x)
            taps.append(x)
        return tuple(taps)


class LPIPS(nn.Module):
    """(x, y) network-resolution images (B, H, W, 3) in [-1, 1] -> LPIPS distance (B,) float32.

    The VGG trunk runs once on the concatenated batch [x; y] in the compute `dtype`; the
    normalisation, the lin layers and the averages are computed in float32. Parameters float32.
    """
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, y):
        taps = VGG16Features(dtype=self.dtype, name="features")(
            scaling_layer(jnp.concatenate([x, y], axis=0).astype(jnp.float32)))
        n = x.shape[0]
        total = jnp.zeros((n,), jnp.float32)
        for index, tap in enumerate(taps):
            tap = normalize_channels(tap.astype(jnp.float32))
            diff = jnp.square(tap[:n] - tap[n:])
            lin = nn.Conv(1, (1, 1), use_bias=False, kernel_init=_nonnegative_init,
                          precision=jax.lax.Precision.HIGHEST, name=f"lin{index}")(diff)
            total = total + jnp.mean(lin, axis=(1, 2, 3))
        return total


def preprocess(images: jax.Array, resize_to: Optional[int] = INPUT_SIZE) -> jax.Array:
    """(B, H, W, 1 or 3) images in [-1, 1] -> (B, S, S, 3) float32 (S = resize_to; H x W kept
    when it is None): one channel is repeated to three, and with `resize_to` the images are resized bilinearly to resize_to x resize_to with
    `jax.image.resize` (half-pixel centres, as torch's `F.interpolate(mode='bilinear',
    align_corners=False)`; `antialias=False`, so downsampling matches it too)."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 1 or 3); got shape {images.shape}")
    if resize_to:
        b, _, _, c = images.shape
        images = jax.image.resize(images, (b, resize_to, resize_to, c), method="bilinear",
                                  antialias=False)
    if min(images.shape[1:3]) < MIN_SIZE:
        raise ValueError(f"LPIPS-VGG needs images of at least {MIN_SIZE}x{MIN_SIZE} at the network "
                         f"(four 2x2 max-pools); got {images.shape[1:3]}: set resize_to")
    return images


def lpips_distance(params, x: jax.Array, y: jax.Array, resize_to: Optional[int] = INPUT_SIZE,
                   dtype: Any = jnp.float32) -> jax.Array:
    """LPIPS distance (B,) between images x and y (B, H, W, 1 or 3) in [-1, 1]; `params` is an
    argument here (traced under jit); `lpips_distance_fn` binds it."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape; got {x.shape} and {y.shape}")
    return LPIPS(dtype=dtype).apply({"params": params}, preprocess(x, resize_to),
                                    preprocess(y, resize_to))


def lpips_distance_fn(params, resize_to: Optional[int] = INPUT_SIZE, dtype: Any = jnp.float32
                      ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Returns the jittable `fn(x, y) -> (B,)` float32 LPIPS distance of NHWC images in [-1, 1]
    (any size; grayscale repeated to RGB; resized bilinearly to `resize_to` x `resize_to` unless
    `resize_to` is None). Differentiable in x and y, for use as a training distance.

    `fn` is a `jax.tree_util.Partial` whose leaves are the params: passed to a jitted function
    as an argument, the weights are traced inputs; a jitted function that closes over `fn`
    instead embeds the ~59 MB of weights in the program as constants (it works, but compiles
    slower).
    """
    return jax.tree_util.Partial(
        functools.partial(_distance_of_params, resize_to=resize_to, dtype=dtype), params)


def _distance_of_params(params, x, y, *, resize_to, dtype):
    return lpips_distance(params, x, y, resize_to, dtype)


def abstract_lpips_params():
    """The LPIPS params as a tree of jax.ShapeDtypeStruct (no weights needed): the layout a
    method keeps them in before `load_lpips_params` fills them."""
    x = jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3))
    return jax.eval_shape(LPIPS().init, jax.random.PRNGKey(0), x, x)["params"]


def param_shapes() -> dict[str, tuple]:
    """{'params/features/conv1_1/kernel': (3, 3, 3, 64), ...}: the flat tree a weight file holds."""
    return dict(_param_shapes())


@functools.lru_cache(maxsize=None)
def _param_shapes() -> dict[str, tuple]:
    shapes = jax.eval_shape(LPIPS().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3)), jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3)))
    return {"/".join(str(k.key) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree.flatten_with_path(shapes)[0]}


def check_flat_params(flat, where: str) -> None:
    """ConfigError unless `flat` ('params/...' -> array) is exactly the LPIPS tree with
    non-negative lin weights."""
    want = param_shapes()
    got = {name: tuple(np.shape(value)) for name, value in flat.items()}
    if got != want:
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise ConfigError(
            f"{where} does not hold LPIPS-VGG16 weights ({WEIGHTS_CONFIG_KEY}): missing "
            f"{sorted(set(want) - set(got))[:3]}, unexpected {sorted(set(got) - set(want))[:3]}, "
            f"wrong shape {wrong[:3]}; make it with tools/convert_lpips_weights.py")
    negative = [k for k in want if "/lin" in k and np.min(np.asarray(flat[k])) < 0]
    if negative:
        raise ConfigError(f"{where} has negative LPIPS lin weights in {negative[:3]} "
                          f"({WEIGHTS_CONFIG_KEY}); v0.1 lin weights are non-negative")


def save_lpips_params(path, params) -> None:
    """Writes the params to a flat `.npz` ('params/features/conv1_1/kernel', ...)."""
    save_variables(path, {"params": params})


def load_lpips_params(path) -> dict:
    """Reads the params written by `save_lpips_params` or the converter. A missing file, or one
    whose arrays are not the LPIPS tree, raises ConfigError naming `consistency.lpips_weights`."""
    if not path or not os.path.exists(path):
        raise ConfigError(f"LPIPS weights not found (looked for {path!r}): set the config key "
                          f"{WEIGHTS_CONFIG_KEY} to {_MAKE_FILE}")
    try:
        variables = load_variables(path, f"LPIPS weights not found ({WEIGHTS_CONFIG_KEY})")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{WEIGHTS_CONFIG_KEY} {str(path)!r} is not a readable .npz ({e}); "
                          f"it should be {_MAKE_FILE}") from None
    check_flat_params(flatten_variables(variables), f"{WEIGHTS_CONFIG_KEY} {str(path)!r}")
    return variables["params"]
