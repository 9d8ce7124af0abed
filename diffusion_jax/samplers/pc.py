"""Predictor-corrector samplers of the reverse SDE (Song et al. 2021, Sec. 4.2, Alg. 1-4).

On the time grid t_0 = T > ... > t_{N-1} = eps (linspace(T, eps, N)), each step runs the
corrector (`n_corrector_steps` score-based MCMC steps at t_i) and then the predictor (one step of a
reverse-time solver). Predictors:

- euler_maruyama: x <- x - [f - g^2 s] dt + g sqrt(dt) z with dt = T / N (Alg. 2 / 3 with EM);
- reverse_diffusion: the reverse of the SDE's own chain, x <- x - f_i + G_i^2 s + G_i z (App. E);
- ancestral: DDPM ancestral sampling for VP (Eq. 4) and its SMLD analogue for VE (App. F);
- none.

Correctors:

- langevin: x <- x + e s + sqrt(2 e) z, e = 2 alpha_i (r ||z|| / ||s||)^2 with norms averaged over
  the batch and r the signal-to-noise ratio `snr` (Alg. 4; alpha_i = 1 - beta_i for VP / sub-VP,
  1 for VE);
- annealed_langevin: the same step with e = 2 alpha_i (r sigma(t))^2 (annealed Langevin dynamics
  of SMLD in the reference code's form);
- none.

`pc_replace` is conditional sampling by replacement (App. I.2): inpainting and colourisation.

The whole sampler is one `jax.lax.fori_loop`, so it compiles to one program. The score function is
called as score_fn(x, t) with x (B, ...) and t (B,).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax.processes.sde import SDE, VESDE, ScoreFn, SubVPSDE, VPSDE, expand
from diffusion_jax.samplers.editing import replace

Update = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
Project = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def euler_maruyama(score_fn: ScoreFn, sde: SDE) -> Update:
    """Reverse-time Euler-Maruyama step of size T / N."""
    dt = sde.T / sde.N

    def update(rng, x, t):
        drift, diffusion = sde.reverse(score_fn).sde(x, t)
        x_mean = x - drift * dt
        return x_mean + expand(diffusion * math.sqrt(dt), x) * jax.random.normal(rng, x.shape), x_mean
    return update


def reverse_diffusion(score_fn: ScoreFn, sde: SDE) -> Update:
    """x_i = x_{i+1} - f_{i+1} + G_{i+1}^2 s + G_{i+1} z (App. E)."""
    def update(rng, x, t):
        f, g = sde.reverse(score_fn).discretize(x, t)
        x_mean = x - f
        return x_mean + expand(g, x) * jax.random.normal(rng, x.shape), x_mean
    return update


def ancestral(score_fn: ScoreFn, sde: SDE) -> Update:
    """VP: x_mean = (x + beta_i s) / sqrt(1 - beta_i), std sqrt(beta_i) (Eq. 4).
    VE: x_mean = x + (sigma_i^2 - sigma_{i-1}^2) s,
    std = sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) (App. F)."""
    if isinstance(sde, VPSDE):
        def update(rng, x, t):
            beta = expand(sde.discrete_betas[sde.chain_index(t)], x)
            x_mean = (x + beta * score_fn(x, t)) / jnp.sqrt(1.0 - beta)
            return x_mean + jnp.sqrt(beta) * jax.random.normal(rng, x.shape), x_mean
        return update
    if isinstance(sde, VESDE):
        def update(rng, x, t):
            i = sde.chain_index(t)
            sigma = expand(sde.discrete_sigmas[i], x)
            prev = expand(jnp.where(i == 0, 0.0, sde.discrete_sigmas[jnp.maximum(i - 1, 0)]), x)
            x_mean = x + (sigma**2 - prev**2) * score_fn(x, t)
            std = jnp.sqrt(prev**2 * (sigma**2 - prev**2) / sigma**2)
            return x_mean + std * jax.random.normal(rng, x.shape), x_mean
        return update
    raise ValueError(f"ancestral sampling needs a VPSDE or VESDE chain, not {type(sde).__name__}")


def _no_update(score_fn: ScoreFn, sde: SDE, *unused) -> Update:
    return lambda rng, x, t: (x, x)


def _langevin_alpha(sde: SDE, t: jax.Array) -> jax.Array:
    if isinstance(sde, (VPSDE, SubVPSDE)):
        return 1.0 - sde.discrete_betas[sde.chain_index(t)]
    return jnp.ones_like(t)


def _langevin_steps(score_fn, sde, n_steps, step_size_fn) -> Update:
    def update(rng, x, t):
        alpha = _langevin_alpha(sde, t)

        def body(k, carry):
            x, _ = carry
            grad = score_fn(x, t)
            z = jax.random.normal(jax.random.fold_in(rng, k), x.shape)
            e = expand(step_size_fn(grad, z, t) * 2.0 * alpha, x)
            x_mean = x + e * grad
            return x_mean + jnp.sqrt(2.0 * e) * z, x_mean
        return jax.lax.fori_loop(0, n_steps, body, (x, x))
    return update


def langevin(score_fn: ScoreFn, sde: SDE, snr: float, n_steps: int) -> Update:
    """Alg. 4: e = 2 alpha_i (snr ||z|| / ||s||)^2, both norms averaged over the batch."""
    def step_size(grad, z, t):
        norm = lambda a: jnp.mean(jnp.linalg.norm(a.reshape(a.shape[0], -1), axis=-1))
        return jnp.full_like(t, (snr * norm(z) / norm(grad)) ** 2)
    return _langevin_steps(score_fn, sde, n_steps, step_size)


def annealed_langevin(score_fn: ScoreFn, sde: SDE, snr: float, n_steps: int) -> Update:
    """e = 2 alpha_i (snr sigma(t))^2 (annealed Langevin dynamics, Song & Ermon 2019, Alg. 1)."""
    return _langevin_steps(score_fn, sde, n_steps,
                           lambda grad, z, t: jnp.square(snr * sde.sigma(t)))


PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion,
              "ancestral": ancestral, "none": _no_update}
CORRECTORS = {"langevin": langevin, "annealed_langevin": annealed_langevin, "none": _no_update}


def paper_defaults(sde: SDE) -> dict:
    """The sampler settings of Song et al. 2021 and its released configs: VP / sub-VP: Euler-Maruyama, no corrector,
    end time 1e-3; VE: reverse diffusion + Langevin (snr 0.16, one step), end time 1e-5."""
    if isinstance(sde, VESDE):
        return dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16,
                    n_corrector_steps=1, eps=1e-5)
    return dict(predictor="euler_maruyama", corrector="none", snr=0.16, n_corrector_steps=1,
                eps=1e-3)


def pc_sample(score_fn: ScoreFn, sde: SDE, rng: jax.Array, shape, *,
              predictor: str = "euler_maruyama", corrector: str = "none", snr: float = 0.16,
              n_corrector_steps: int = 1, num_steps: Optional[int] = None, eps: float = 1e-3,
              denoise: bool = True, x_init: Optional[jax.Array] = None,
              project: Optional[Project] = None, start_step: int = 0) -> tuple[jax.Array, int]:
    """Samples of shape `shape` from x_T ~ p_T (or `x_init`), and the number of score evaluations.

    `num_steps` (default sde.N) sets N of the grid and of the SDE's chain together, so the
    discrete predictors and correctors always run the N-step chain of the same continuous SDE.
    With `denoise` the result is the noise-free mean of the last predictor step (Song et al. code).
    `project(rng, x, x_mean, t) -> (x, x_mean)` runs after every corrector and predictor update
    (the replacement step of conditional sampling, `pc_replace`). `start_step` > 0 skips the
    first steps of the grid: x_init is then the state at time linspace(T, eps, num_steps)[start_step]
    (SDEdit).
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; valid: {sorted(PREDICTORS)}")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; valid: {sorted(CORRECTORS)}")
    num_steps = sde.N if num_steps is None else num_steps
    sde = dataclasses.replace(sde, N=num_steps)
    predict = PREDICTORS[predictor](score_fn, sde)
    correct = CORRECTORS[corrector](score_fn, sde, snr, n_corrector_steps)
    project = project or (lambda rng, x, x_mean, t: (x, x_mean))
    timesteps = jnp.linspace(sde.T, eps, num_steps)
    init_rng, loop_rng = jax.random.split(rng)
    x = sde.prior_sampling(init_rng, shape) if x_init is None else x_init

    def step(i, carry):
        x, _ = carry
        t = jnp.full((shape[0],), timesteps[i])
        keys = jax.random.split(jax.random.fold_in(loop_rng, i), 4)
        x, x_mean = project(keys[0], *correct(keys[1], x, t), t)
        return project(keys[2], *predict(keys[3], x, t), t)

    x, x_mean = jax.lax.fori_loop(start_step, num_steps, step, (x, x))
    nfe = (num_steps - start_step) * (int(predictor != "none") + n_corrector_steps * int(corrector != "none"))
    return (x_mean if denoise else x), nfe


def pc_replace(score_fn: ScoreFn, sde: SDE, rng: jax.Array, y: jax.Array, mask,
               basis: Optional[jax.Array] = None, **pc_options) -> tuple[jax.Array, int]:
    """Samples whose coordinates x Q equal y Q where `mask` is True (`editing.replace`; Q =
    `basis`, the identity when None), and the number of score evaluations: the known part of y is
    noised with the forward kernel, y_t = alpha(t) y + sigma(t) z, and replaces the known part of
    the state after every predictor and corrector update (Song et al. 2021, App. I.2).
    `pc_options` go to `pc_sample` (predictor, corrector, snr, num_steps, eps, ...)."""
    def project(rng, x, x_mean, t):
        mean, std = sde.marginal_prob(y, t)
        y_t = mean + expand(std, y) * jax.random.normal(rng, y.shape, y.dtype)
        return replace(y_t, x, mask, basis), replace(mean, x_mean, mask, basis)

    prior_rng, known_rng, sample_rng = jax.random.split(rng, 3)
    x_T = sde.prior_sampling(prior_rng, y.shape)
    x_init, _ = project(known_rng, x_T, x_T, jnp.full(y.shape[:1], sde.T, y.dtype))
    x, nfe = pc_sample(score_fn, sde, sample_rng, y.shape, x_init=x_init, project=project,
                       **pc_options)
    return replace(y, x, mask, basis), nfe
