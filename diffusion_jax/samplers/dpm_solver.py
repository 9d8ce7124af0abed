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

Beside them, on a given grid (`samplers.common`): the multistep DPM-Solver++(3M) and
k-diffusion's 3M SDE, and the single-step DPM-Solver++(2S) with ancestral noise.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.denoisers import call, per_example, vp_sigma, vp_t_of_sigma
from diffusion_jax.errors import choose
from diffusion_jax.samplers.common import (multistep_orders, one_evaluation_per_step, start,
                                           step_noise)

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


SECOND_ORDER_FORMS = ("heun", "midpoint")


def dpm_solver_pp_3m_sample(denoiser: Callable, rng: jax.Array, shape, *, sigmas: jax.Array,
                            x_init: Optional[jax.Array] = None, cond=None, eta: float = 0.0,
                            S_noise: float = 1.0, second_order: str = "heun",
                            lower_order_final: bool = False, taylor_d2: bool = False,
                            noise: Optional[jax.Array] = None) -> jax.Array:
    """DPM-Solver++(3M) (Lu et al. 2022b) on the grid `sigmas`; with eta > 0 k-diffusion's
    DPM-Solver++(3M) SDE (`sample_dpmpp_3m_sde`; eta = 1 is SDE-DPM-Solver++).

    One evaluation per step. With h = log(sigma_s / sigma_t), H = (1 + eta) h, phi_2 = (e^-H - 1) / H + 1,
    phi_3 = phi_2 / H - 1/2 and the model outputs D_0, D_1, D_2 at sigma_s and the two points before
    (gaps h_1, h_2, r_k = h_k / h):
        x_t = (sigma_t / sigma_s) e^{-eta h} x_s - (e^-H - 1) D_0 + phi_2 D1 - phi_3 D2
              + sigma_t sqrt(1 - e^{-2 eta h}) S_noise n,
    D1 = d_0 + (d_0 - d_1) r_1 / (r_1 + r_2), D2 = (d_0 - d_1) / (r_1 + r_2), d_0 = (D_0 - D_1) / r_1,
    d_1 = (D_1 - D_2) / r_2. The first step is first order, the second second order: phi_2 d_0
    ('heun', k-diffusion) or -(e^-H - 1) d_0 / 2 ('midpoint', diffusers' default solver_type).
    `lower_order_final`: diffusers' rule below 15 steps (`multistep_orders`). A step onto
    sigma = 0 is x = D_0. diffusers' DPMSolverMultistepScheduler(solver_order=3,
    algorithm_type='dpmsolver++') is eta = 0, second_order='midpoint', lower_order_final=True.

    The references' D2 term (LuChengTHU/dpm-solver, diffusers, k-diffusion) carries h phi_3(h)
    where the Taylor expansion of the integral has 2 h phi_3(h) (D2 approximates h^2 D''/2, not
    h^2 D''), so the method is of order 2, not 3; `taylor_d2=True` doubles the term and gives
    order 3. `noise`: (num_steps, *shape) draws to use instead of drawing from rng.
    """
    choose("second-order form", second_order, SECOND_ORDER_FORMS)
    D, sigmas, x, loop_rng = start(denoiser, rng, shape, sigmas, x_init, cond)
    num_steps = sigmas.shape[0] - 1
    orders = multistep_orders(num_steps, 3, lower_order_final)
    d2_factor = 2.0 if taylor_d2 else 1.0

    def step(i, x, m0, m1, m2, sigma_s, sigma_t):
        h = jnp.log(sigma_s / sigma_t)
        H = (1.0 + eta) * h
        phi_2 = jnp.expm1(-H) / H + 1.0
        x_t = (sigma_t / sigma_s) * jnp.exp(-eta * h) * x - jnp.expm1(-H) * m0
        r1 = jnp.log(sigmas[jnp.maximum(i - 1, 0)] / sigma_s) / h
        r2 = jnp.log(sigmas[jnp.maximum(i - 2, 0)] / sigmas[jnp.maximum(i - 1, 0)]) / h
        d0 = (m0 - m1) / r1

        def second():
            if second_order == "heun":
                return x_t + phi_2 * d0
            return x_t - 0.5 * jnp.expm1(-H) * d0

        def third():
            d1 = (m1 - m2) / r2
            D1 = d0 + (d0 - d1) * r1 / (r1 + r2)
            D2 = (d0 - d1) / (r1 + r2)
            phi_3 = phi_2 / H - 0.5
            return x_t + phi_2 * D1 - d2_factor * phi_3 * D2

        x_t = jax.lax.switch(orders[i] - 1, [lambda: x_t, second, third])
        if eta > 0:
            n = step_noise(loop_rng, noise, i, x)
            x_t = x_t + sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) * S_noise * n
        return x_t

    def body(i, carry):
        x, m1, m2 = carry
        sigma_s, sigma_t = sigmas[i], sigmas[i + 1]
        m0 = D(x, sigma_s)
        x = jax.lax.cond(sigma_t > 0, lambda: step(i, x, m0, m1, m2, sigma_s, sigma_t),
                         lambda: m0)
        return x, m0, m1

    x, _, _ = jax.lax.fori_loop(0, num_steps, body, (x, jnp.zeros_like(x), jnp.zeros_like(x)))
    return x


dpm_solver_pp_3m_nfe = one_evaluation_per_step


def ancestral_levels(sigma, sigma_next, eta):
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next: sigma_up =
    min(sigma_next, eta sigma_next sqrt(1 - sigma_next^2 / sigma^2)), sigma_down =
    sqrt(sigma_next^2 - sigma_up^2) (k-diffusion's get_ancestral_step; eta = 1 is the exact
    Gaussian posterior step)."""
    sigma_up = jnp.minimum(sigma_next,
                           eta * sigma_next * jnp.sqrt(1.0 - jnp.square(sigma_next / sigma)))
    return jnp.sqrt(jnp.maximum(jnp.square(sigma_next) - jnp.square(sigma_up), 0.0)), sigma_up


def dpm_solver_pp_2s_ancestral_sample(denoiser: Callable, rng: jax.Array, shape, *,
                                      sigmas: jax.Array, x_init: Optional[jax.Array] = None,
                                      cond=None, eta: float = 1.0, S_noise: float = 1.0,
                                      noise: Optional[jax.Array] = None) -> jax.Array:
    """DPM-Solver++(2S) ancestral (k-diffusion's `sample_dpmpp_2s_ancestral`): each step moves
    deterministically to sigma_down by the single-step DPM-Solver++(2S) with its intermediate
    point at the lambda midpoint sigma_m = sqrt(sigma sigma_down),
        u = (sigma_m / sigma) x - (e^{-h/2} - 1) D(x, sigma),
        x' = (sigma_down / sigma) x - (e^{-h} - 1) D(u, sigma_m),   h = log(sigma / sigma_down),
    then adds sigma_up S_noise n (`ancestral_levels`; eta = 0 is the ODE solver DPM-Solver++(2S)).
    A step with sigma_down = 0 is x = D(x, sigma). Evaluations: `dpm_solver_pp_2s_ancestral_nfe`.
    """
    D, sigmas, x, loop_rng = start(denoiser, rng, shape, sigmas, x_init, cond)

    def two_stage(x, m, sigma, sigma_down):
        h = jnp.log(sigma / sigma_down)
        sigma_mid = jnp.sqrt(sigma * sigma_down)
        u = (sigma_mid / sigma) * x - jnp.expm1(-0.5 * h) * m
        return (sigma_down / sigma) * x - jnp.expm1(-h) * D(u, sigma_mid)

    def body(i, x):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_down, sigma_up = ancestral_levels(sigma, sigma_next, eta)
        m = D(x, sigma)
        x = jax.lax.cond(sigma_down > 0, lambda: two_stage(x, m, sigma, sigma_down), lambda: m)
        return x + sigma_up * S_noise * step_noise(loop_rng, noise, i, x)

    return jax.lax.fori_loop(0, sigmas.shape[0] - 1, body, x)


def dpm_solver_pp_2s_ancestral_nfe(sigmas, eta: float = 1.0) -> int:
    """Two evaluations per step, one where sigma_down = 0 (the step onto sigma = 0)."""
    sigmas = np.asarray(sigmas, np.float64)
    sigma_down, _ = ancestral_levels(sigmas[:-1], sigmas[1:], eta)
    return int(np.sum(np.where(np.asarray(sigma_down) > 0, 2, 1)))
