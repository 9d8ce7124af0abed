"""The denoiser interface D(x, sigma, cond) and converters to and from it.

Convention (Karras et al. 2022, Sec. 2): x = x0 + sigma n with n ~ N(0, I), and
D(x, sigma) = E[x0 | x]. `sigma` is a scalar or a (B,) array; `cond` is optional and is passed
on only when it is not None, so D(x, sigma) and D(x, sigma, cond) are both valid calls.

A variance-preserving process x_t = alpha x0 + sigma_t n is the same process rescaled:
x_t / alpha = x0 + (sigma_t / alpha) n, so its EDM noise level is sigma = sigma_t / alpha and
alpha = 1 / sqrt(1 + sigma^2) when alpha^2 + sigma_t^2 = 1 (Karras et al. 2022, Eq. 12 and
App. C.2). Every converter below is exact under this correspondence.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax.processes import parameterization
from diffusion_jax.processes.schedules import DiscreteSchedule

Denoiser = Callable[..., jax.Array]


def call(fn: Callable, x: jax.Array, level: jax.Array, cond=None) -> jax.Array:
    """fn(x, level) when cond is None, else fn(x, level, cond)."""
    return fn(x, level) if cond is None else fn(x, level, cond)


def per_example(value, x: jax.Array) -> jax.Array:
    """A scalar or (B,) noise level as a (B,) array in x's dtype."""
    return jnp.broadcast_to(jnp.asarray(value, dtype=x.dtype), (x.shape[0],))


def expand(a: jax.Array, x: jax.Array) -> jax.Array:
    """A (B,) array reshaped to broadcast against x of shape (B, ...)."""
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def grid_with_zero(sigmas: jax.Array) -> jax.Array:
    """A decreasing noise-level grid with sigma = 0 appended: its last step is x = D(x, sigma)."""
    return jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])


def vp_alpha(sigma: jax.Array) -> jax.Array:
    """alpha = 1 / sqrt(1 + sigma^2): the signal scale of a VP process at EDM noise level sigma."""
    return jax.lax.rsqrt(1.0 + jnp.square(sigma))


def vp_sigma(t: jax.Array, beta_d: float = 19.9, beta_min: float = 0.1) -> jax.Array:
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) of the linear-beta VP SDE
    (Karras et al. 2022, Table 1; Song et al. 2021, Eq. 33 with beta_d = beta_max - beta_min)."""
    return jnp.sqrt(jnp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_t_of_sigma(sigma: jax.Array, beta_d: float = 19.9, beta_min: float = 0.1) -> jax.Array:
    """sigma^{-1}: t = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d."""
    return (jnp.sqrt(beta_min**2 + 2.0 * beta_d * jnp.log1p(jnp.square(sigma))) - beta_min) / beta_d


def from_prediction(fn: Callable, kind: str, t_of_sigma: Callable = lambda sigma: sigma,
                    alpha_of_t: Optional[Callable] = None) -> Denoiser:
    """D from an `kind` ('epsilon' | 'x0' | 'v') network fn(x_t, t[, cond]) of x_t = alpha x0 + sigma_t n.

    t = t_of_sigma(sigma) is what the network is conditioned on; alpha = alpha_of_t(t), by default
    the VP scale 1 / sqrt(1 + sigma^2). The network sees x_t = alpha x and sigma_t = alpha sigma,
    and D = x0-prediction (epsilon: (x_t - sigma_t eps) / alpha; v: alpha x_t - sigma_t v).
    """
    def denoiser(x, sigma, cond=None):
        sigma = per_example(sigma, x)
        t = t_of_sigma(sigma)
        alpha = vp_alpha(sigma) if alpha_of_t is None else alpha_of_t(t)
        x_t = expand(alpha, x) * x
        pred = call(fn, x_t, t, cond)
        return parameterization.to_x0(kind, pred, x_t, alpha, alpha * sigma)
    return denoiser


def discrete_sigmas(schedule: DiscreteSchedule) -> jax.Array:
    """sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i), increasing in i (Karras et al. 2022, App. C.3)."""
    return jnp.sqrt((1.0 - schedule.alpha_bars) / schedule.alpha_bars)


def discrete_t_of_sigma(schedule: DiscreteSchedule, mode: str = "nearest") -> Callable:
    """Timestep index of an EDM sigma on a DDPM schedule, as a float array.

    'nearest': argmin_i |log sigma - log sigma_i| (EDM's round_sigma for iDDPM/VP nets);
    'interpolate': piecewise-linear in log sigma between neighbouring indices, clamped to [0, T-1].
    """
    log_sigmas = jnp.log(discrete_sigmas(schedule))
    index = jnp.arange(log_sigmas.shape[0], dtype=log_sigmas.dtype)
    if mode == "nearest":
        return lambda sigma: jnp.argmin(
            jnp.abs(jnp.log(sigma)[..., None] - log_sigmas), axis=-1).astype(log_sigmas.dtype)
    if mode == "interpolate":
        return lambda sigma: jnp.interp(jnp.log(sigma), log_sigmas, index)
    raise ValueError(f"unknown mode {mode!r}; valid: ['interpolate', 'nearest']")


def discrete_sigma_of_t(schedule: DiscreteSchedule) -> Callable:
    """sigma(t) at a float timestep index t: log sigma_i interpolated linearly in t, exact at
    integer t and the inverse of `discrete_t_of_sigma(schedule, 'interpolate')`."""
    log_sigmas = jnp.log(discrete_sigmas(schedule))
    index = jnp.arange(log_sigmas.shape[0], dtype=log_sigmas.dtype)
    return lambda t: jnp.exp(jnp.interp(t, index, log_sigmas))


def discrete_time_maps(schedule: DiscreteSchedule) -> tuple[Callable, Callable]:
    """(sigma_of_t, t_of_sigma) for the continuous time t = (i + 1) / T of a T-step schedule
    (DPM-Solver, Lu et al. 2022, Sec. 3.4 and App. D.1), log sigma linear in i between timesteps."""
    log_sigmas = jnp.log(discrete_sigmas(schedule))
    index = jnp.arange(log_sigmas.shape[0], dtype=log_sigmas.dtype)
    num = log_sigmas.shape[0]
    sigma_of_t = lambda t: jnp.exp(jnp.interp(t * num - 1.0, index, log_sigmas))
    t_of_sigma = lambda sigma: (jnp.interp(jnp.log(sigma), log_sigmas, index) + 1.0) / num
    return sigma_of_t, t_of_sigma


def from_discrete(fn: Callable, kind: str, schedule: DiscreteSchedule,
                  mode: str = "nearest") -> Denoiser:
    """D from a DDPM network fn(x_t, t_index[, cond]) (t_index a (B,) float array in 0..T-1).

    The network is queried at x_t = x / sqrt(1 + sigma^2) and at the timestep of sigma (see
    `discrete_t_of_sigma`), as EDM does for its VP and iDDPM networks; exact on the schedule's sigmas.
    """
    return from_prediction(fn, kind, discrete_t_of_sigma(schedule, mode))


def from_score(score_fn: Callable, t_of_sigma: Callable,
                  alpha_of_t: Optional[Callable] = None) -> Denoiser:
    """Tweedie for x_t = alpha x0 + sigma_t n: E[x0 | x_t] = (x_t + sigma_t^2 score(x_t, t)) / alpha.

    With x_t = alpha x and sigma_t = alpha sigma: D(x, sigma) = x + alpha sigma^2 score(alpha x, t)
    (VE: alpha = 1, D = x + sigma^2 score; Karras et al. 2022, Eq. 3). `alpha_of_t` defaults to
    the VP scale 1 / sqrt(1 + sigma^2).
    """
    def denoiser(x, sigma, cond=None):
        sigma = per_example(sigma, x)
        t = t_of_sigma(sigma)
        alpha = vp_alpha(sigma) if alpha_of_t is None else alpha_of_t(t)
        score = call(score_fn, expand(alpha, x) * x, t, cond)
        return x + expand(alpha * sigma**2, x) * score
    return denoiser
