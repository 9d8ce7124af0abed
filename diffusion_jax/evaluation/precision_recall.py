"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models", sec. 2).

Each set's manifold is the union of balls around its points with radius the distance to the
point's k-th nearest neighbour in the same set. Then

    precision = fraction of fake points inside the real manifold,
    recall    = fraction of real points inside the fake manifold.
"""
from __future__ import annotations

import numpy as np

_BATCH = 1024


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _knn_radii_squared(features: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour, the point itself excluded."""
    radii = np.empty(len(features))
    for start in range(0, len(features), _BATCH):
        d = _squared_distances(features[start:start + _BATCH], features)
        rows = np.arange(d.shape[0])
        d[rows, start + rows] = -np.inf  # the point itself sorts first, whatever the round-off
        radii[start:start + _BATCH] = np.partition(d, k, axis=1)[:, k]
    return radii


def _fraction_inside(manifold: np.ndarray, radii_squared: np.ndarray, queries: np.ndarray) -> float:
    inside = 0
    for start in range(0, len(queries), _BATCH):
        d = _squared_distances(queries[start:start + _BATCH], manifold)
        inside += int(np.any(d <= radii_squared[None, :], axis=1).sum())
    return inside / len(queries)


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray,
                     k: int = 3) -> tuple[float, float]:
    """(precision, recall) of fake features (M, d) against real features (N, d), with k-th
    nearest-neighbour radii (k = 3 as in the paper)."""
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, d) with the same d; got {real.shape} and {fake.shape}")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k must be in [1, {min(len(real), len(fake)) - 1}]; got {k}")
    precision = _fraction_inside(real, _knn_radii_squared(real, k), fake)
    recall = _fraction_inside(fake, _knn_radii_squared(fake, k), real)
    return precision, recall
