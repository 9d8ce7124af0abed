"""EDM samplers on a denoiser D(x, sigma[, cond]) (Karras et al. 2022, Algorithms 1 and 2).

The probability-flow ODE in the EDM convention is dx/dsigma = (x - D(x, sigma)) / sigma (Eq. 4
with sigma(t) = t, s(t) = 1). Every sampler loops with `jax.lax` over a fixed sigma grid, so it
compiles to one program; a step onto sigma = 0 is always a plain Euler step, x = D(x, sigma).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import call, expand, per_example

SOLVERS = ("heun", "euler", "euler_ancestral")


def sigma_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0) -> jax.Array:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i < N, and sigma_N = 0 (Karras et al. 2022, Eq. 5); N + 1 values."""
    inv_rho = 1.0 / rho
    ramp = jnp.arange(num_steps) / max(num_steps - 1, 1)
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])


def ode_derivative(denoiser: Callable, x: jax.Array, sigma, cond=None) -> jax.Array:
    """dx/dsigma = (x - D(x, sigma)) / sigma (Eq. 4 with sigma(t) = t; sigma scalar or (B,))."""
    sigma = per_example(sigma, x)
    return (x - call(denoiser, x, sigma, cond)) / expand(sigma, x)


def euler_step(denoiser: Callable, x: jax.Array, sigma, sigma_next, cond=None) -> jax.Array:
    """x + (sigma_next - sigma) dx/dsigma: one Euler step of the probability-flow ODE."""
    delta = expand(per_example(sigma_next, x) - per_example(sigma, x), x)
    return x + delta * ode_derivative(denoiser, x, sigma, cond)


def heun_step(denoiser: Callable, x: jax.Array, sigma, sigma_next, cond=None) -> jax.Array:
    """Heun's second-order step from sigma to sigma_next > 0 (Algorithm 1, lines 5-8): the mean
    of the slopes at x and at the Euler prediction."""
    delta = expand(per_example(sigma_next, x) - per_example(sigma, x), x)
    d = ode_derivative(denoiser, x, sigma, cond)
    x_euler = x + delta * d
    return x + delta * 0.5 * (d + ode_derivative(denoiser, x_euler, sigma_next, cond))


ODE_STEPS = {"heun": heun_step, "euler": euler_step}


def edm_sample(denoiser: Callable, rng: jax.Array, shape, *, num_steps: int = 18,
               sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               solver: str = "heun", S_churn: float = 0.0, S_min: float = 0.0,
               S_max: float = math.inf, S_noise: float = 1.0, eta: float = 1.0, cond=None,
               x_init: Optional[jax.Array] = None, sigmas: Optional[jax.Array] = None) -> jax.Array:
    """Samples of shape `shape` by the EDM sampler.

    solver 'heun' is Algorithm 1 (2N - 1 evaluations on the default grid, Euler last step) and
    'euler' its first-order version; S_churn > 0 turns either into Algorithm 2: before the step
    from sigma_i, gamma_i = min(S_churn / N, sqrt(2) - 1) when S_min <= sigma_i <= S_max,
    sigma_hat = (1 + gamma_i) sigma_i and x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) S_noise n.
    'euler_ancestral' takes the DDPM-like ancestral step: from sigma to sigma' it moves
    deterministically to sigma_down = sqrt(sigma'^2 - sigma_up^2) and adds sigma_up n, with
    sigma_up = eta sigma' sqrt(1 - sigma'^2 / sigma^2) (eta = 1: the exact Gaussian posterior step).

    `sigmas` (decreasing, optionally ending at 0) replaces the rho grid; then N = len(sigmas) - 1.
    `x_init` is the state at sigmas[0]; by default sigmas[0] * N(0, I).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {list(SOLVERS)}")
    if sigmas is None:
        sigmas = sigma_steps(num_steps, sigma_min, sigma_max, rho)
    num = sigmas.shape[0] - 1
    init_rng, loop_rng = jax.random.split(rng)
    if x_init is None:
        x_init = sigmas[0] * jax.random.normal(init_rng, shape)
    sigmas = sigmas.astype(x_init.dtype)
    D = lambda x, sigma: call(denoiser, x, per_example(sigma, x), cond)
    gamma_max = min(S_churn / max(num, 1), math.sqrt(2.0) - 1.0)

    def ode_step(x, sigma, sigma_next):
        if solver == "euler":
            return euler_step(D, x, sigma, sigma_next)
        return jax.lax.cond(sigma_next > 0, lambda: heun_step(D, x, sigma, sigma_next),
                            lambda: euler_step(D, x, sigma, sigma_next))

    def ancestral_step(x, sigma, sigma_next, key):
        sigma_up = jnp.minimum(sigma_next, eta * sigma_next * jnp.sqrt(1.0 - (sigma_next / sigma) ** 2))
        sigma_down = jnp.sqrt(jnp.maximum(sigma_next**2 - sigma_up**2, 0.0))
        x = x + (sigma_down - sigma) * (x - D(x, sigma)) / sigma
        return x + sigma_up * jax.random.normal(key, x.shape, x.dtype)

    def body(i, x):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        churn_key, step_key = jax.random.split(jax.random.fold_in(loop_rng, i))
        if solver == "euler_ancestral":
            return ancestral_step(x, sigma, sigma_next, step_key)
        if S_churn > 0:
            gamma = jnp.where((sigma >= S_min) & (sigma <= S_max), gamma_max, 0.0)
            sigma_hat = sigma * (1.0 + gamma)
            noise = jax.random.normal(churn_key, x.shape, x.dtype)
            x = x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * S_noise * noise  # sqrt(sigma_hat^2 - sigma^2)
            sigma = sigma_hat
        return ode_step(x, sigma, sigma_next)

    return jax.lax.fori_loop(0, num, body, x_init)
