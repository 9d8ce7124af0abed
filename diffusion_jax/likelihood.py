"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, Sec. 4.3, App. D.2).

Along dx/dt = f~(x, t) (Eq. 13) the log-density obeys d log p_t(x(t)) / dt = -div f~(x(t), t), so

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt

with p_T taken as the prior. The divergence is exact (a JVP per data dimension, for small
dimensions and tests) or the Hutchinson-Skilling estimate div f~ ~ v^T (d f~ / dx) v with one
Rademacher or Gaussian probe v per example, fixed along the path (App. D.2). Both use `jax.jvp`
and assume the score acts on each example independently.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax.processes.sde import SDE, ScoreFn
from diffusion_jax.samplers.ode import ode_solve

DIVERGENCES = ("rademacher", "gaussian", "exact")


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1)


def exact_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """sum_i d fn(x)_i / d x_i per example, (B,), from one JVP per dimension."""
    basis = jnp.eye(_flat(x).shape[1], dtype=x.dtype)

    def diagonal_entry(e):
        tangent = jnp.broadcast_to(e, _flat(x).shape).reshape(x.shape)
        return _flat(jax.jvp(fn, (x,), (tangent,))[1]) @ e
    return jnp.sum(jax.lax.map(diagonal_entry, basis), axis=0)


def drift_and_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                         v: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """(fn(x), div fn(x)): the exact divergence when `v` is None, else the Hutchinson-Skilling
    estimate v^T (d fn / d x) v per example, unbiased for E[v v^T] = I (one JVP)."""
    if v is None:
        return fn(x), exact_divergence(fn, x)
    y, jv = jax.jvp(fn, (x,), (v,))
    return y, jnp.sum(_flat(v * jv), axis=-1)


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: jax.Array, rng: jax.Array, *,
                   divergence: str = "rademacher", eps: float = 1e-5,
                   **solver) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log p_eps(x) in nats (B,), the latent x(T), NFE), integrating from eps to T.

    `solver` goes to `ode_solve` (method, rtol, atol, num_steps); the default is Tsit5 with
    rtol = atol = 1e-5, the paper's RK45 setting.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {list(DIVERGENCES)}")
    drift = sde.probability_flow_drift(score_fn)
    probes = {"rademacher": jax.random.rademacher, "gaussian": jax.random.normal}
    v = probes[divergence](rng, x.shape, x.dtype) if divergence in probes else None

    def vector_field(state, t):
        fn = lambda y: drift(y, jnp.full((y.shape[0],), t, y.dtype))
        return drift_and_divergence(fn, state[0], v)

    (z, delta_logp), nfe = ode_solve(vector_field, (x, jnp.zeros(x.shape[:1], x.dtype)),
                                     eps, sde.T, **solver)
    return sde.prior_logp(z) + delta_logp, z, nfe


def log_likelihood_to_bits_per_dim(logp: jax.Array, num_dims: int, num_levels: int = 256,
                 data_range: float = 2.0) -> jax.Array:
    """bpd = -(log p(x) + D log(data_range / L)) / (D ln 2) = -log p(x) / (D ln 2) + log2(L / data_range).

    For data quantised to L levels and uniformly dequantised, a bin is data_range / L wide in the
    model's data space, so log P(bin) >= E_u log p(x + u) + D log(data_range / L) (Theis et al.
    2016). Data in [-1, 1] (data_range 2) with L = 256 adds 7 bits, data in [0, 1] adds 8.
    """
    return -(logp + num_dims * math.log(data_range / num_levels)) / (num_dims * math.log(2.0))


def dequantize(rng: jax.Array, x: jax.Array, num_levels: int = 256) -> jax.Array:
    """Uniform dequantisation of x in [-1, 1] on the levels -1 + 2k / (L - 1), k = 0..L-1:
    k -> 2 (k + u) / L - 1 with u ~ U[0, 1), so level k fills the bin [2k / L - 1, 2(k+1) / L - 1)."""
    k = jnp.round((x + 1.0) / 2.0 * (num_levels - 1))
    return 2.0 * (k + jax.random.uniform(rng, x.shape, x.dtype)) / num_levels - 1.0


def dequantized_bpd(score_fn: ScoreFn, sde: SDE, x: jax.Array, rng: jax.Array, *,
                    num_levels: int = 256, **likelihood) -> tuple[jax.Array, jax.Array]:
    """Bits per dimension (B,) of quantised data x in [-1, 1] and the NFE: dequantise, take the
    ODE log-likelihood (`likelihood` goes to `log_likelihood`) and convert with `log_likelihood_to_bits_per_dim`."""
    deq_rng, probe_rng = jax.random.split(rng)
    logp, _, nfe = log_likelihood(score_fn, sde, dequantize(deq_rng, x, num_levels), probe_rng,
                                  **likelihood)
    return log_likelihood_to_bits_per_dim(logp, math.prod(x.shape[1:]), num_levels), nfe
