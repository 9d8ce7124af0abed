"""The variational bound of DDPM in bits/dim (Ho et al. 2020, Eq. 5 and Sec. 3.3).

    -log p_theta(x_0) <= L = L_T + sum_{t=2}^T L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),  x_t ~ q(x_t | x_0),
    L_0     = -log p_theta(x_0 | x_1),

with q(x_{t-1} | x_t, x_0) = N(mu_tilde_t(x_t, x_0), beta_tilde_t I) (Eq. 6-7) and p_theta(x_{t-1}
| x_t) = N(mu_tilde_t(x_t, x0_hat), sigma_t^2 I), x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta)
/ sqrt(alpha_bar_t): the mean of Eq. 11 written through the x_0 prediction; sigma_t^2 = beta_t or
beta_tilde_t (Sec. 3.2). p_theta(x_0 | x_1) is the discretized Gaussian decoder (Eq. 13) on the L
pixel levels of [-1, 1], the edge bins extended to -inf and +inf, with variance beta_tilde_2 in
both settings (beta_tilde_1 = 0), as the paper's released code computes the NLL of its Table 1
(Sec. 3.2 would give beta_1 with sigma_t^2 = beta_t). Each expectation over x_t is one sample.
Index i = t - 1 as in `processes.schedules`; terms are in nats per example.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from diffusion_jax.processes import parameterization
from diffusion_jax.processes.schedules import (DiscreteSchedule, clipped_posterior_log_variance,
                                              learned_log_variance, marginal_coefficients,
                                              posterior_mean_coefficients, q_sample)
from diffusion_jax.samplers.ddpm import ANCESTRAL_VARIANCES, EpsFn


def _per_example(a: jax.Array, x: jax.Array) -> jax.Array:
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def _sum(a: jax.Array) -> jax.Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) per element."""
    return 0.5 * (log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-log_var2) - 1.0)


def prior_kl(schedule: DiscreteSchedule, x0: jax.Array) -> jax.Array:
    """L_T = KL(N(sqrt(alpha_bar_T) x0, (1 - alpha_bar_T) I) || N(0, I)) per example (Eq. 5)."""
    ab = schedule.alpha_bars[-1]
    return _sum(0.5 * (ab * x0 ** 2 - ab - jnp.log1p(-ab)))


def discretized_gaussian_log_likelihood(x, mean, log_var, num_levels: int = 256):
    """log P(x) per element for N(mean, e^log_var) on the bin [x - h, x + h], h = 1 / (L - 1),
    of the level x in {-1, -1 + 2h, ..., 1}, with (-inf, -1 + h] and [1 - h, inf) at the edges
    (Eq. 13). log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - Phi(a) / Phi(b)) on the side of the
    mean where both tails are small (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)), so it stays exact
    however far the bin lies from the mean."""
    h = 1.0 / (num_levels - 1)
    inv_std = jnp.exp(-0.5 * log_var)
    lo, hi = (x - h - mean) * inv_std, (x + h - mean) * inv_std
    flip = lo > 0
    a, b = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_b = log_ndtr(b)
    interior = log_b + jnp.log(-jnp.expm1(log_ndtr(a) - log_b))
    return jnp.where(x < -1.0 + h, log_ndtr(hi), jnp.where(x > 1.0 - h, log_ndtr(-lo), interior))


def _prediction(eps_fn: EpsFn, schedule: DiscreteSchedule, x0, i, noise, clip_x0: bool,
                variance: str):
    """(x0_hat, log sigma_t^2 or None) at x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t)
    noise, indices i (B,); one evaluation of eps_fn(x_t, t), whose second half of channels is the
    variance output v for `variance` 'learned' (`schedules.learned_log_variance`). `clip_x0`
    clips x0_hat to [-1, 1], as the ancestral sampler's option does."""
    if variance not in ANCESTRAL_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; valid: {ANCESTRAL_VARIANCES}")
    alpha, sigma = marginal_coefficients(schedule, i)
    x_t = q_sample(schedule, x0, i, noise)
    eps, log_var = eps_fn(x_t, i.astype(jnp.float32)), None
    if variance == "learned":
        eps, v = jnp.split(eps, 2, axis=-1)
        log_var = learned_log_variance(schedule, i, v)
    x0_hat = parameterization.to_x0("epsilon", eps, x_t, alpha, sigma)
    return (jnp.clip(x0_hat, -1.0, 1.0) if clip_x0 else x0_hat), log_var


def term_nats(schedule: DiscreteSchedule, x0, x0_hat, i, log_var, num_levels: int = 256):
    """The bound's term at indices i (B,) per example, in nats, for p_theta(x_{t-1} | x_t) of
    mean mu_tilde_t(x_t, x0_hat) and log variance `log_var` (broadcast to x0): L_{t-1} where
    i >= 1, L_0 where i = 0 (`decoder_nll`'s discretized Gaussian; mean x0_hat, as c0_1 = 1).

    mu_tilde_t(x_t, x_0) is affine in x_0 with slope c0_t = sqrt(alpha_bar_{t-1}) beta_t /
    (1 - alpha_bar_t) (Eq. 7), so the two means differ by c0_t (x_0 - x0_hat) and the KL is that
    of the means c0_t x_0 and c0_t x0_hat (Eq. 8); q's log variance is
    `clipped_posterior_log_variance`, as the improved-DDPM code's."""
    c0 = _per_example(posterior_mean_coefficients(schedule, i)[0], x0)
    log_var = jnp.broadcast_to(log_var, x0.shape)
    true_log_var = _per_example(clipped_posterior_log_variance(schedule)[i], x0)
    kl = _sum(normal_kl(c0 * x0, true_log_var, c0 * x0_hat, log_var))
    nll = -_sum(discretized_gaussian_log_likelihood(x0, x0_hat, log_var, num_levels))
    return jnp.where(i == 0, nll, kl)


def kl_term(eps_fn: EpsFn, schedule: DiscreteSchedule, x0, i, noise, *, variance: str = "beta",
            clip_x0: bool = False) -> jax.Array:
    """L_{t-1} per example at indices i = t - 1 >= 1 (B,), x_t from `noise` (Eq. 5), sigma_t^2
    = beta_t, beta-tilde_t or the network's (`_prediction`)."""
    s = schedule
    x0_hat, log_var = _prediction(eps_fn, s, x0, i, noise, clip_x0, variance)
    if log_var is None:
        sigma2 = s.betas if variance == "beta" else s.posterior_variance
        log_var = _per_example(jnp.log(sigma2[i]), x0)
    return term_nats(s, x0, x0_hat, i, log_var)


def decoder_nll(eps_fn: EpsFn, schedule: DiscreteSchedule, x0, noise, *, clip_x0: bool = False,
                num_levels: int = 256, variance: str = "beta") -> jax.Array:
    """L_0 = -log p_theta(x_0 | x_1) per example, x_1 from `noise`: the discretized Gaussian of
    mean mu_tilde_1(x_1, x0_hat) = x0_hat (c0_1 = 1, no x_1 term) and variance beta_tilde_2, or
    the network's for `variance` 'learned'."""
    i = jnp.zeros(x0.shape[:1], jnp.int32)
    x0_hat, log_var = _prediction(eps_fn, schedule, x0, i, noise, clip_x0, variance)
    if log_var is None:
        log_var = jnp.log(schedule.posterior_variance[1])
    return term_nats(schedule, x0, x0_hat, i, log_var, num_levels)


def vlb_terms(eps_fn: EpsFn, schedule: DiscreteSchedule, x0: jax.Array, rng: jax.Array, *,
              variance: str = "beta", clip_x0: bool = False, num_levels: int = 256):
    """(L_0, L_1, ..., L_{T-1}) per example, (B, T): T network evaluations, one timestep at a
    time over the batch (`jax.lax.map`), the noise of term i from fold_in(rng, i)."""
    def noise(i):
        return jax.random.normal(jax.random.fold_in(rng, i), x0.shape, x0.dtype)

    L_0 = decoder_nll(eps_fn, schedule, x0, noise(0), clip_x0=clip_x0, num_levels=num_levels,
                      variance=variance)
    kl = jax.lax.map(lambda i: kl_term(eps_fn, schedule, x0, jnp.full(x0.shape[:1], i), noise(i),
                                       variance=variance, clip_x0=clip_x0),
                     jnp.arange(1, schedule.num_timesteps))
    return jnp.concatenate([L_0[:, None], kl.T], axis=1)


def vlb_bits_per_dim(eps_fn: EpsFn, schedule: DiscreteSchedule, x0: jax.Array, rng: jax.Array, *,
                 timesteps: int = 0, variance: str = "beta", clip_x0: bool = False,
                 num_levels: int = 256) -> tuple[jax.Array, int]:
    """(L / (D ln 2) per example (B,), network evaluations) for quantised images x0 in [-1, 1].

    timesteps = 0: the exact sum over all T terms (`vlb_terms`), what the paper reports.
    timesteps = K > 0: L_T + L_0 + (T - 1) / K sum_k L_{t_k - 1} with t_k ~ U{2, ..., T} drawn
    independently per example, an unbiased estimate of L from K + 1 evaluations.
    """
    T = schedule.num_timesteps
    if timesteps < 0:
        raise ValueError(f"timesteps must be >= 0 (0 = all {T}), got {timesteps}")
    if timesteps == 0:
        terms = vlb_terms(eps_fn, schedule, x0, rng, variance=variance, clip_x0=clip_x0,
                          num_levels=num_levels)
        nats, nfe = jnp.sum(terms, axis=-1), T
    else:
        t_rng, n_rng = jax.random.split(rng)

        def noise(k):
            return jax.random.normal(jax.random.fold_in(n_rng, k), x0.shape, x0.dtype)

        i = jax.random.randint(t_rng, (timesteps, x0.shape[0]), 1, T)
        kl = jax.lax.map(lambda k_i: kl_term(eps_fn, schedule, x0, k_i[1], noise(k_i[0] + 1),
                                             variance=variance, clip_x0=clip_x0),
                         (jnp.arange(timesteps), i))
        L_0 = decoder_nll(eps_fn, schedule, x0, noise(0), clip_x0=clip_x0, num_levels=num_levels,
                          variance=variance)
        nats, nfe = L_0 + (T - 1) * jnp.mean(kl, axis=0), timesteps + 1
    num_dims = math.prod(x0.shape[1:])
    return (prior_kl(schedule, x0) + nats) / (num_dims * math.log(2.0)), nfe
