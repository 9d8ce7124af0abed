"""Continuous-time denoising score matching (Song et al. 2021, Eq. 7).

L = E_t E_{x0, z} [lambda(t) ||s(x_t, t) + z / sigma(t)||^2], x_t = alpha(t) x0 + sigma(t) z,
t ~ U(eps, T), since grad log p_0t(x_t | x0) = -z / sigma(t). The weight is lambda = sigma^2
(the default, the loss becomes ||sigma s + z||^2) or lambda = g^2 (`likelihood_weighting`, which
makes L a bound on the negative log-likelihood; Song et al. 2021b, Thm. 1). sigma s + z is the
error of the noise prediction eps = -sigma s, so `snr_weight(SNR(t))` can weight it further, SNR
= alpha^2 / sigma^2 = 1 / sigma_edm(t)^2 (the epsilon weights of `losses.weighting`).

`importance_weighting` (with likelihood weighting) draws t from p(t) ~ g(t)^2 / sigma(t)^2 on
[eps, T] by inverting its closed-form CDF and weights by Z / (T - eps), Z = int_eps^T g^2 / sigma^2,
so the estimate has the same expectation as uniform t with much lower variance
(Song et al. 2021b, Sec. 5). With B(t) = int_0^t beta, the antiderivatives Lambda of
g^2 / sigma^2 are:

- VP: g^2 / sigma^2 = beta / (1 - e^{-B}), Lambda = log(e^B - 1);
- sub-VP: g^2 / sigma^2 = beta (e^B + 1) / (e^B - 1), Lambda = 2 log(e^B - 1) - B;
- VE: g^2 / sigma^2 = 2 log(sigma_max / sigma_min), constant, so p(t) is uniform.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax.processes.sde import SDE, VESDE, ScoreFn, SubVPSDE, VPSDE, expand

REDUCTIONS = ("mean", "sum")


def _log_weight_antiderivative(sde: SDE, t: jax.Array) -> jax.Array:
    """Lambda(t) with Lambda' = g^2 / sigma^2 (module docstring)."""
    if isinstance(sde, VESDE):
        return 2.0 * math.log(sde.sigma_max / sde.sigma_min) * t
    b = sde.integrated_beta(t)
    if isinstance(sde, SubVPSDE):
        return 2.0 * jnp.log(jnp.expm1(b)) - b
    return jnp.log(jnp.expm1(b))


def _inverse_log_weight_antiderivative(sde: SDE, lam: jax.Array) -> jax.Array:
    """t with Lambda(t) = lam: B from Lambda in closed form, then t from the quadratic B(t)."""
    if isinstance(sde, VESDE):
        return lam / (2.0 * math.log(sde.sigma_max / sde.sigma_min))
    if isinstance(sde, SubVPSDE):
        c = jnp.exp(lam)  # (y - 1)^2 / y = c for y = e^B > 1
        b = jnp.log1p(0.5 * (c + jnp.sqrt(c * (c + 4.0))))
    else:
        b = jax.nn.softplus(lam)  # e^B - 1 = e^lam
    slope = sde.beta_max - sde.beta_min
    return 2.0 * b / (sde.beta_min + jnp.sqrt(sde.beta_min**2 + 2.0 * slope * b))


def importance_sample_t(sde: SDE, rng: jax.Array, n: int, eps: float = 1e-5
                        ) -> tuple[jax.Array, jax.Array]:
    """t ~ p(t) ~ g(t)^2 / sigma(t)^2 on [eps, T] (n,) and Z = int_eps^T g^2 / sigma^2 dt."""
    if not isinstance(sde, (VPSDE, SubVPSDE, VESDE)):
        raise ValueError(f"no importance distribution for {type(sde).__name__}")
    lo = _log_weight_antiderivative(sde, jnp.asarray(eps, jnp.float32))
    hi = _log_weight_antiderivative(sde, jnp.asarray(sde.T, jnp.float32))
    u = jax.random.uniform(rng, (n,))
    t = _inverse_log_weight_antiderivative(sde, lo + u * (hi - lo))
    return jnp.clip(t, eps, sde.T), hi - lo


def dsm_loss(score_fn: ScoreFn, sde: SDE, x0: jax.Array, rng: jax.Array, *, eps: float = 1e-5,
             likelihood_weighting: bool = False, importance_weighting: bool = False,
             reduce: str = "mean", snr_weight: Optional[Callable] = None) -> jax.Array:
    """The batch mean of lambda(t) ||s(x_t, t) + z / sigma(t)||^2, the squared norm reduced over
    the data dimensions by `reduce` ('mean': VP / sub-VP in the paper; 'sum': VE), times
    `snr_weight(SNR(t))` when given (not with the likelihood weighting)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; valid: {list(REDUCTIONS)}")
    if importance_weighting and not likelihood_weighting:
        raise ValueError("importance_weighting samples t for the likelihood weighting; "
                         "set likelihood_weighting=True")
    if snr_weight is not None and likelihood_weighting:
        raise ValueError("snr_weight replaces the likelihood weighting; set one of them")
    t_rng, z_rng = jax.random.split(rng)
    n = x0.shape[0]
    if importance_weighting:
        t, z_norm = importance_sample_t(sde, t_rng, n, eps)
    else:
        t = jax.random.uniform(t_rng, (n,), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_rng, x0.shape, x0.dtype)
    mean, sigma = sde.marginal_prob(x0, t)
    x_t = mean + expand(sigma, x0) * z
    residual = expand(sigma, x0) * score_fn(x_t, t) + z  # sigma (s + z / sigma)
    reduce_fn = jnp.mean if reduce == "mean" else jnp.sum
    per_example = reduce_fn(jnp.square(residual).reshape(n, -1), axis=-1)
    if importance_weighting:
        weight = z_norm / (sde.T - eps)
    elif likelihood_weighting:
        weight = jnp.square(sde.sde(x0, t)[1]) / jnp.square(sigma)
    elif snr_weight is not None:
        weight = snr_weight(1.0 / jnp.square(sde.edm_sigma(t)))
    else:
        weight = 1.0
    return jnp.mean(weight * per_example)
