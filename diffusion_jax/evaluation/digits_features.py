"""A small CNN classifier of the 8x8 scikit-learn digits, used as the feature network for
evaluating models trained on the embedded digits data set.

The features are the classifier's 64-d penultimate layer (after ReLU) and the logits its 10
class scores. A Frechet distance computed on these features is NOT FID: it lives in a
digits-specific feature space, is not comparable with any published FID, and only ranks models
trained on the digits against one another. Likewise the Inception Score of its logits is a
"digits classifier score", not the Inception Score.

The weights are stored in `assets/digits_classifier.npz` (trained by
`tools/train_digits_classifier.py`, fixed seed, on the `train` split only).
"""
from __future__ import annotations

import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                            "digits_classifier.npz")
FEATURE_DIM = 64
NUM_CLASSES = 10


class DigitsClassifier(nn.Module):
    """conv3x3(32) -> conv3x3(32) -> avgpool 2 -> conv3x3(64) -> avgpool 2 -> dense(64) -> dense(10),
    on (B, 8, 8, 1) images in [-1, 1]. Returns (features (B, 64), logits (B, 10))."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        features = nn.relu(nn.Dense(FEATURE_DIM)(x))
        h = nn.Dropout(0.3, deterministic=not train)(features)
        logits = nn.Dense(NUM_CLASSES)(h)
        return features, logits


def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested parameter dict -> {'Conv_0/kernel': array, ...} for `np.savez`."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat["/".join(str(k.key) for k in path)] = np.asarray(leaf, np.float32)
    return flat


def unflatten_params(flat) -> dict:
    params: dict = {}
    for name, value in flat.items():
        node = params
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = jnp.asarray(value)
    return params


def save_classifier_params(path, params) -> None:
    with open(path, "wb") as f:
        np.savez(f, **flatten_params(params))


def load_classifier_params(path: str = WEIGHTS_PATH) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"digits classifier weights not found at {path}; "
                                "run tools/train_digits_classifier.py")
    with np.load(path) as data:
        return unflatten_params({name: data[name] for name in data.files})


def digits_feature_fn(batch_size: int = 512, path: str = WEIGHTS_PATH
                      ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Returns `fn(images (N, 8, 8, 1) in [-1, 1]) -> (features (N, 64), logits (N, 10))` as
    numpy float32 arrays. Images go through one jitted program in fixed-size batches (the
    last one zero-padded), so any N compiles once."""
    params = load_classifier_params(path)
    model = DigitsClassifier()
    apply = jax.jit(lambda x: model.apply({"params": params}, x, train=False))

    def fn(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (8, 8, 1):
            raise ValueError(f"digits images must be (N, 8, 8, 1); got {images.shape}")
        features, logits = [], []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            n = len(batch)
            if n < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - n, 8, 8, 1), np.float32)])
            f, l = apply(batch)
            features.append(np.asarray(f)[:n])
            logits.append(np.asarray(l)[:n])
        if not features:
            return np.zeros((0, FEATURE_DIM), np.float32), np.zeros((0, NUM_CLASSES), np.float32)
        return np.concatenate(features), np.concatenate(logits)

    return fn
