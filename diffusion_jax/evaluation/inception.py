"""Inception-v3 as used for FID: the TensorFlow graph of 2015-12-05 (Szegedy et al. 2016,
"Rethinking the Inception Architecture"), as pytorch-fid rebuilds it (`FIDInceptionA`, `C`,
`E_1`, `E_2`): average pools exclude padding, the last block max-pools, and the classifier has
1008 outputs. Input is NHWC 299x299x3 scaled to [-1, 1]; output is (pool3 features (B, 2048),
logits (B, 1008)).

Layer names follow torchvision/pytorch-fid (`Conv2d_1a_3x3`, `Mixed_5b/branch1x1`, ...) so
`tools/convert_inception_weights.py` maps pytorch-fid's `pt_inception-2015-12-05` state dict
one to one. Weights are not shipped: the config key `eval.inception_weights` names the `.npz`.

Preprocessing (`preprocess`) follows pytorch-fid: images in [-1, 1] are quantised to uint8
values round(127.5 (x + 1)), resized bilinearly (half-pixel centres, no antialiasing, like
`F.interpolate(..., align_corners=False)`) to 299x299, then scaled as 2 (v / 255) - 1.
"""
from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
WEIGHTS_CONFIG_KEY = "eval.inception_weights"


class BasicConv2d(nn.Module):
    """Convolution without bias -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Sequence[int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, tuple(self.kernel_size), strides=tuple(self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/c/d (pytorch-fid `FIDInceptionA`)."""
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b/c/d/e (pytorch-fid `FIDInceptionC`), factorised 7x7 convolutions."""
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (`FIDInceptionE_1`, average pool without padding) and Mixed_7c
    (`FIDInceptionE_2`, max pool: a bug of the 2015 graph that FID keeps)."""
    pool: str  # "avg" or "max"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """(B, 299, 299, 3) in [-1, 1] -> (pool3 (B, 2048), logits (B, 1008))."""

    @nn.compact
    def __call__(self, x):
        x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool3 = x.mean(axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, name="fc")(pool3)
        return pool3, logits


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """(B, H, W, C) images in [-1, 1] (C = 1 or 3) -> (B, size, size, 3) network input:
    uint8 quantisation round(127.5 (x + 1)), bilinear resize, then 2 (v / 255) - 1."""
    images = jnp.asarray(images, jnp.float32)
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    if images.shape[-1] != 3:
        raise ValueError(f"images must have 1 or 3 channels; got shape {images.shape}")
    quantised = jnp.clip(jnp.round(127.5 * (images + 1.0)), 0.0, 255.0)
    if images.shape[1:3] != (size, size):
        quantised = jax.image.resize(quantised, (images.shape[0], size, size, 3), "bilinear",
                                     antialias=False)
    return quantised / 255.0 * 2.0 - 1.0


def flatten_variables(variables) -> dict[str, np.ndarray]:
    """{'params': {...}, 'batch_stats': {...}} -> {'params/Mixed_5b/branch1x1/conv/kernel': ...}."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        flat["/".join(str(k.key) for k in path)] = np.asarray(leaf, np.float32)
    return flat


def unflatten_variables(flat) -> dict:
    variables: dict = {}
    for name, value in flat.items():
        node = variables
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = jnp.asarray(value)
    return variables


def save_inception_params(path, variables) -> None:
    """Writes the variables ({'params', 'batch_stats'}) to an `.npz` keyed by '/'-joined paths."""
    with open(path, "wb") as f:
        np.savez(f, **flatten_variables(variables))


def load_inception_params(path) -> dict:
    """Reads the variables written by `save_inception_params` or the converter."""
    if not path or not os.path.exists(path):
        raise FileNotFoundError(
            f"Inception-v3 FID weights not found at {path!r}: set the config key "
            f"{WEIGHTS_CONFIG_KEY} to an .npz made by tools/convert_inception_weights.py "
            "from pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    with np.load(path) as data:
        return unflatten_variables({name: data[name] for name in data.files})


def inception_feature_fn(path, batch_size: int = 100):
    """Returns `fn(images (N, H, W, C) in [-1, 1]) -> (pool3 (N, 2048), logits (N, 1008))` as
    numpy arrays, preprocessing and network in one jitted program per fixed-size batch."""
    variables = load_inception_params(path)
    model = FIDInceptionV3()
    apply = jax.jit(lambda x: model.apply(variables, preprocess(x)))

    def fn(images):
        images = np.asarray(images, np.float32)
        features, logits = [], []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            n = len(batch)
            if n < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], np.float32)])
            f, l = apply(batch)
            features.append(np.asarray(f)[:n])
            logits.append(np.asarray(l)[:n])
        if not features:
            return np.zeros((0, FEATURE_DIM), np.float32), np.zeros((0, NUM_LOGITS), np.float32)
        return np.concatenate(features), np.concatenate(logits)

    return fn
