"""Frechet distance between Gaussians fitted to feature sets (the formula behind FID).

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))      (Heusel et al. 2017, eq. 6)

Which feature network produced the features decides what the number means: Inception-v3 pool3
features give FID; any other network gives a Frechet distance in its own feature space.
Statistics are stored as `.npz` files with keys `mu` and `sigma`, as pytorch-fid does.
"""
from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), in float64 (`np.cov`, rowvar=False)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, F); got shape {features.shape}")
    mu = features.mean(axis=0)
    sigma = np.atleast_2d(np.cov(features, rowvar=False))
    return mu, sigma


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues
    (round-off) are clipped to zero."""
    matrix = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((S_1 S_2)^(1/2)) is computed as Tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2)): the inner matrix is
    symmetric positive semi-definite, so both roots are eigendecompositions with clipped
    eigenvalues, which stays finite and real for rank-deficient covariances (fewer samples than
    feature dimensions), where scipy's `sqrtm` of the non-symmetric product may not.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    sqrt_sigma1 = _psd_sqrt(sigma1)
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    eigenvalues = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    trace_sqrt_product = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product
    return float(max(distance, 0.0))


def save_statistics(path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Writes `mu` and `sigma` to an `.npz` file (the pytorch-fid layout)."""
    with open(path, "wb") as f:
        np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    """Reads (mu, sigma) from an `.npz` file with keys `mu` and `sigma`."""
    with np.load(path) as data:
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
