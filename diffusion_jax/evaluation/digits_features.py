"""A small CNN classifier of the 8x8 scikit-learn digits, the feature network for models trained
on the embedded digits data set.

The features are the classifier's 64-d penultimate layer (after ReLU) and the logits its 10
class scores. A Frechet distance computed on these features is NOT FID: it lives in a
digits-specific feature space, is not comparable with any published FID, and only ranks models
trained on the digits against one another. Likewise the Inception Score of its logits is a
"digits classifier score", not the Inception Score.

The weights ship in `assets/digits_classifier.npz`, found relative to this file (trained by
`tools/train_digits_classifier.py`, seed 0, on the `train` split only; test accuracy 0.976).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion_jax.evaluation.features import batched_feature_fn
from diffusion_jax.weight_files import load_variables, save_variables
from diffusion_jax.parallel import DATA_AXIS

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                            "digits_classifier.npz")
FEATURE_DIM = 64
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


class DigitsClassifier(nn.Module):
    """conv3x3(32) -> conv3x3(32) -> avgpool 2 -> conv3x3(64) -> avgpool 2 -> dense(64) -> dense(10),
    on (B, 8, 8, 1) images in [-1, 1]. Returns (features (B, 64), logits (B, 10)) in float32."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(32, (3, 3), dtype=self.dtype)(x))
        x = nn.relu(nn.Conv(32, (3, 3), dtype=self.dtype)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), dtype=self.dtype)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        features = nn.relu(nn.Dense(FEATURE_DIM, dtype=self.dtype)(x))
        h = nn.Dropout(0.3, deterministic=not train)(features)
        logits = nn.Dense(NUM_CLASSES, dtype=self.dtype)(h)
        return features.astype(jnp.float32), logits.astype(jnp.float32)


def save_classifier_params(path, params) -> None:
    """Writes the classifier's params to a flat `.npz` ('Conv_0/kernel', ...)."""
    save_variables(path, params)


def load_classifier_params(path: str = WEIGHTS_PATH) -> dict:
    return load_variables(path, "digits classifier weights not found; "
                                "run tools/train_digits_classifier.py")


def digits_feature_fn(batch_size: int = 512, path: str = WEIGHTS_PATH, mesh: Mesh | None = None,
                      data_axis: str = DATA_AXIS
                      ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Returns `fn(images (N, 8, 8, 1) in [-1, 1]) -> (features (N, 64), logits (N, 10))` as
    numpy float32 arrays, one jitted program over batches of `batch_size` (split over `mesh`'s
    `data_axis` when a mesh is given)."""
    model = DigitsClassifier()
    extract = batched_feature_fn(lambda params, x: model.apply({"params": params}, x),
                                 load_classifier_params(path), batch_size, mesh, data_axis)

    def fn(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"digits images must be (N, 8, 8, 1); got {images.shape}")
        return extract(images)

    return fn
