"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b) on a denoiser D(x, sigma[, cond]).

Both are exponential integrators of the probability-flow ODE in the half log-SNR
lambda = log(alpha / sigma_t). In the EDM convention alpha = 1 and lambda = -log sigma, and a VP
model enters through `diffusion_jax.denoisers.from_prediction` (x_t = alpha x, so the solvers'
trajectories are the VP ones divided by alpha). With h = lambda_t - lambda_s = log(sigma_s / sigma_t):

- noise prediction eps = (x - D) / sigma, DPM-Solver-1: x_t = x_s - sigma_t (e^h - 1) eps_s (Eq. 3.7);
- data prediction D, DPM-Solver++-1: x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) D_s (Eq. 4.8).

Orders 2 and 3 add finite differences of the model output at intermediate lambdas
(DPM-Solver Algorithms 1 and 2 with r1 = 1/2, resp. r1 = 1/3, r2 = 2/3; DPM-Solver++ Algorithm 1
and its third-order counterpart). A step onto sigma = 0 is x = D(x, sigma). Loops use `jax.lax`
over a fixed number of steps.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import call, per_example, vp_sigma, vp_t_of_sigma

SPACINGS = ("logsnr", "time_uniform", "time_quadratic")
PREDICTIONS = ("noise", "data")


def dpm_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
               spacing: str = "logsnr", denoise_to_zero: bool = False,
               sigma_of_t: Callable = vp_sigma, t_of_sigma: Callable = vp_t_of_sigma) -> jax.Array:
    """num_steps + 1 decreasing noise levels from sigma_max to sigma_min (DPM-Solver Sec. 3.4).

    'logsnr': lambda uniform; 'time_uniform' / 'time_quadratic': t, resp. sqrt(t), uniform between
    t_of_sigma(sigma_max) and t_of_sigma(sigma_min) of the process sigma_of_t (default: the
    linear-beta VP SDE). `denoise_to_zero` appends sigma = 0 (one more evaluation, x = D).
    """
    ramp = jnp.arange(num_steps + 1) / num_steps
    if spacing == "logsnr":
        log_max, log_min = jnp.log(sigma_max), jnp.log(sigma_min)
        sigmas = jnp.exp(log_max + ramp * (log_min - log_max))
    elif spacing in ("time_uniform", "time_quadratic"):
        power = 1.0 if spacing == "time_uniform" else 2.0
        t_max, t_min = t_of_sigma(jnp.asarray(sigma_max)), t_of_sigma(jnp.asarray(sigma_min))
        root_max, root_min = t_max ** (1.0 / power), t_min ** (1.0 / power)
        sigmas = sigma_of_t((root_max + ramp * (root_min - root_max)) ** power)
        sigmas = sigmas.at[0].set(sigma_max).at[-1].set(sigma_min)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {list(SPACINGS)}")
    if denoise_to_zero:
        sigmas = jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])
    return sigmas


def _phi2(z):
    """(e^z - 1) / z - 1."""
    return jnp.expm1(z) / z - 1.0


def _singlestep(model, x, sigma_s, sigma_t, order, prediction):
    """One DPM-Solver(-++) step of `order` from sigma_s to sigma_t > 0.

    Written once for both forms: x_t = a x_s + b phi(z) m with z = +h, a = 1, b = -sigma_t for
    noise prediction and z = -h, a = sigma_t / sigma_s, b = -1 for data prediction.
    """
    sign = 1.0 if prediction == "noise" else -1.0
    h = jnp.log(sigma_s / sigma_t)
    a = lambda sigma: 1.0 if prediction == "noise" else sigma / sigma_s
    b = lambda sigma: -sigma if prediction == "noise" else -1.0
    m_s = model(x, sigma_s)
    if order == 1:
        return a(sigma_t) * x + b(sigma_t) * jnp.expm1(sign * h) * m_s
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    sigma_1 = sigma_s * jnp.exp(-r1 * h)
    u1 = a(sigma_1) * x + b(sigma_1) * jnp.expm1(sign * r1 * h) * m_s
    delta_1 = model(u1, sigma_1) - m_s
    z = sign * h
    if order == 2:
        return (a(sigma_t) * x + b(sigma_t) * jnp.expm1(z) * m_s
                + b(sigma_t) / (2.0 * r1) * jnp.expm1(z) * delta_1)
    r2 = 2.0 / 3.0
    sigma_2 = sigma_s * jnp.exp(-r2 * h)
    z2 = sign * r2 * h
    u2 = (a(sigma_2) * x + b(sigma_2) * jnp.expm1(z2) * m_s
          + b(sigma_2) * (r2 / r1) * _phi2(z2) * delta_1)
    delta_2 = model(u2, sigma_2) - m_s
    return a(sigma_t) * x + b(sigma_t) * jnp.expm1(z) * m_s + b(sigma_t) / r2 * _phi2(z) * delta_2


def _setup(denoiser, rng, shape, cond, x_init, sigmas, num_steps, sigma_min, sigma_max, spacing,
           denoise_to_zero):
    if sigmas is None:
        sigmas = dpm_sigmas(num_steps, sigma_min, sigma_max, spacing, denoise_to_zero)
    init_rng, loop_rng = jax.random.split(rng)
    if x_init is None:
        x_init = sigmas[0] * jax.random.normal(init_rng, shape)
    D = lambda x, sigma: call(denoiser, x, per_example(sigma, x), cond)
    return D, sigmas.astype(x_init.dtype), x_init, loop_rng


def dpm_solver_sample(denoiser: Callable, rng: jax.Array, shape, *, num_steps: int = 10,
                      order: int = 3, prediction: str = "noise", sigma_min: float = 0.002,
                      sigma_max: float = 80.0, spacing: str = "logsnr",
                      denoise_to_zero: bool = False, cond=None, x_init: Optional[jax.Array] = None,
                      sigmas: Optional[jax.Array] = None) -> jax.Array:
    """Single-step DPM-Solver-{1,2,3} ('noise') or DPM-Solver++ ({1,2,3}S, 'data').

    `order` evaluations per step, so order * num_steps in all (+1 with denoise_to_zero).
    `sigmas` (decreasing, optionally ending at 0) replaces the grid of `dpm_sigmas`.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {list(PREDICTIONS)}")
    D, sigmas, x, _ = _setup(denoiser, rng, shape, cond, x_init, sigmas, num_steps, sigma_min,
                             sigma_max, spacing, denoise_to_zero)
    model = D if prediction == "data" else lambda x, sigma: (x - D(x, sigma)) / sigma

    def body(i, x):
        sigma_s, sigma_t = sigmas[i], sigmas[i + 1]
        return jax.lax.cond(sigma_t > 0,
                            lambda: _singlestep(model, x, sigma_s, sigma_t, order, prediction),
                            lambda: D(x, sigma_s))
    return jax.lax.fori_loop(0, sigmas.shape[0] - 1, body, x)


def dpm_solver_pp_2m_sample(denoiser: Callable, rng: jax.Array, shape, *, num_steps: int = 20,
                            sde: bool = False, S_noise: float = 1.0, sigma_min: float = 0.002,
                            sigma_max: float = 80.0, spacing: str = "logsnr",
                            denoise_to_zero: bool = False, cond=None,
                            x_init: Optional[jax.Array] = None,
                            sigmas: Optional[jax.Array] = None) -> jax.Array:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), or SDE-DPM-Solver++(2M) with `sde=True`.

    One evaluation per step. With r = h_prev / h and D' = (1 + 1/(2r)) D_s - 1/(2r) D_prev
    (D' = D_s on the first step):
    ODE: x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) D';
    SDE: x_t = (sigma_t / sigma_s) e^{-h} x_s - (e^{-2h} - 1) D' + sigma_t sqrt(1 - e^{-2h}) S_noise n
    (the exact solution of the reverse SDE in lambda with D frozen, first-order part; Lu et al. 2022b, App.).
    """
    D, sigmas, x, loop_rng = _setup(denoiser, rng, shape, cond, x_init, sigmas, num_steps,
                                    sigma_min, sigma_max, spacing, denoise_to_zero)
    c = 2.0 if sde else 1.0

    def update(i, x, m, m_prev, h_prev, sigma_s, sigma_t):
        h = jnp.log(sigma_s / sigma_t)
        coeff = jnp.where(i == 0, 0.0, h / (2.0 * h_prev))
        m_hat = m + coeff * (m - m_prev)
        x_t = (sigma_t / sigma_s) * jnp.exp(-(c - 1.0) * h) * x - jnp.expm1(-c * h) * m_hat
        if sde:
            noise = jax.random.normal(jax.random.fold_in(loop_rng, i), x.shape, x.dtype)
            x_t = x_t + sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * h)) * S_noise * noise
        return x_t, h

    def body(i, carry):
        x, m_prev, h_prev = carry
        sigma_s, sigma_t = sigmas[i], sigmas[i + 1]
        m = D(x, sigma_s)
        x, h = jax.lax.cond(sigma_t > 0,
                            lambda: update(i, x, m, m_prev, h_prev, sigma_s, sigma_t),
                            lambda: (m, h_prev))
        return x, m, h

    one = jnp.ones((), x.dtype)
    x, _, _ = jax.lax.fori_loop(0, sigmas.shape[0] - 1, body, (x, jnp.zeros_like(x), one))
    return x
