"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models", sec. 2, eqs. 1-3).

Each set's manifold is the union of balls around its points whose radius is the distance to
the point's k-th nearest neighbour in the same set (the point itself excluded). Then

    precision = fraction of fake points inside the real manifold,
    recall    = fraction of real points inside the fake manifold.

Pairwise squared distances |a|^2 - 2 a.b + |b|^2 are computed in jitted float32 blocks of at
most `_BLOCK_ELEMENTS` entries (on an accelerator when there is one), so 50,000 x 50,000
comparisons never sit in memory at once.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK_ELEMENTS = 1 << 25


def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    cross = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
    d = (a * a).sum(1)[:, None] - 2.0 * cross + (b * b).sum(1)[None, :]
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_neighbour_block(rows, first_row, points, k):
    """Squared distance from each of `rows` (= points[first_row:...]) to its k-th nearest
    neighbour in `points`, the row itself excluded."""
    d = _squared_distances(rows, points)
    own = (first_row + jnp.arange(rows.shape[0]))[:, None] == jnp.arange(points.shape[0])[None, :]
    d = jnp.where(own, -jnp.inf, d)  # the point itself sorts first, whatever the round-off
    return -jax.lax.top_k(-d, k + 1)[0][:, k]


@jax.jit
def _inside_block(queries, points, radii_squared):
    return jnp.any(_squared_distances(queries, points) <= radii_squared[None, :], axis=1)


def _row_blocks(rows: np.ndarray, num_columns: int):
    """Yields (first_row, block, n_valid) over `rows` in equal zero-padded blocks."""
    size = int(max(1, min(len(rows), _BLOCK_ELEMENTS // max(num_columns, 1))))
    for start in range(0, len(rows), size):
        block = rows[start:start + size]
        n = len(block)
        yield start, jnp.asarray(np.pad(block, ((0, size - n), (0, 0)))), n


def _knn_radii_squared(features: np.ndarray, k: int) -> np.ndarray:
    if not 1 <= k < len(features):
        raise ValueError(f"k must be in [1, {len(features) - 1}]; got {k}")
    points = jnp.asarray(features)
    return np.concatenate([np.asarray(_kth_neighbour_block(block, start, points, k))[:n]
                           for start, block, n in _row_blocks(features, len(features))])


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance of each feature (N, d) to its k-th nearest neighbour among the others, (N,)."""
    return np.sqrt(_knn_radii_squared(np.asarray(features, np.float32), k))


def _fraction_inside(points: np.ndarray, radii_squared: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of `queries` within distance radii[j] of some points[j] (eq. 1)."""
    points, radii_squared = jnp.asarray(points), jnp.asarray(radii_squared)
    inside = sum(int(np.asarray(_inside_block(block, points, radii_squared))[:n].sum())
                 for _, block, n in _row_blocks(queries, len(points)))
    return inside / len(queries)


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray,
                     k: int = 3) -> tuple[float, float]:
    """(precision, recall) of fake features (M, d) against real features (N, d) with k-th
    nearest-neighbour radii (k = 3 as in the paper), eqs. 2 and 3."""
    real, fake = np.asarray(real_features, np.float32), np.asarray(fake_features, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, d) with the same d; got {real.shape} and {fake.shape}")
    precision = _fraction_inside(real, _knn_radii_squared(real, k), fake)
    recall = _fraction_inside(fake, _knn_radii_squared(fake, k), real)
    return precision, recall
