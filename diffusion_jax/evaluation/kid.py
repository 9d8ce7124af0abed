"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", sec. 3):

    KID = MMD^2_u(X, Y) with the polynomial kernel k(x, y) = (x . y / d + 1)^3,

the unbiased estimator averaged over random subsets of both feature sets. Like the Frechet
distance, its meaning depends on the feature network: on Inception-v3 pool3 features it is KID.
"""
from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for all pairs of rows, (m, n)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size samples x, y (m, d): the diagonal terms k(x_i, x_i)
    are left out of the within-set means."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `num_subsets` pairs of random subsets, each drawn
    without replacement from one set (numpy seed `seed`); the subset size is `subset_size`
    capped at the smaller set's size, as in Binkowski et al.'s reference code."""
    f1 = np.asarray(features1, np.float64)
    f2 = np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, d) with the same d; got {f1.shape} and {f2.shape}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 features; got sets of {len(f1)} and "
                         f"{len(f2)} with subset_size {subset_size}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(f1[rng.choice(len(f1), m, replace=False)],
                                     f2[rng.choice(len(f2), m, replace=False)])
                       for _ in range(num_subsets)])
    return float(values.mean()), float(values.std())
