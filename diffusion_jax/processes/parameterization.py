"""Conversions between the network prediction targets for x_t = alpha x0 + sigma eps.

For a variance-preserving process alpha^2 + sigma^2 = 1 (alpha = sqrt(alpha_bar_t)); the epsilon
and x0 relations hold for any (alpha, sigma). v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4)
is defined for the variance-preserving case.
"""
from __future__ import annotations

import jax

PREDICTION_TARGETS = ("epsilon", "x0", "v")


def _bcast(a, x):
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) if hasattr(a, "reshape") else a


def target(kind: str, x0: jax.Array, eps: jax.Array, alpha, sigma) -> jax.Array:
    """The regression target of a `kind`-prediction network for clean x0 and noise eps."""
    alpha, sigma = _bcast(alpha, x0), _bcast(sigma, x0)
    if kind == "epsilon":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction target {kind!r}; valid: {list(PREDICTION_TARGETS)}")


def to_x0(kind: str, pred: jax.Array, x_t: jax.Array, alpha, sigma) -> jax.Array:
    alpha, sigma = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if kind == "epsilon":
        return (x_t - sigma * pred) / alpha
    if kind == "x0":
        return pred
    if kind == "v":  # requires alpha^2 + sigma^2 = 1
        return alpha * x_t - sigma * pred
    raise ValueError(f"unknown prediction target {kind!r}; valid: {list(PREDICTION_TARGETS)}")


def to_eps(kind: str, pred: jax.Array, x_t: jax.Array, alpha, sigma) -> jax.Array:
    alpha, sigma = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if kind == "epsilon":
        return pred
    if kind == "x0":
        return (x_t - alpha * pred) / sigma
    if kind == "v":  # requires alpha^2 + sigma^2 = 1
        return sigma * x_t + alpha * pred
    raise ValueError(f"unknown prediction target {kind!r}; valid: {list(PREDICTION_TARGETS)}")
