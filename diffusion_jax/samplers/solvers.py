"""The shared solvers: every sampler that runs on a denoiser D(x, sigma[, cond]), whatever family
the model comes from, reached through one function.

A method states its model as a `DenoiserModel` (its denoiser, guided as the sampler says, and
the noise-level range it was trained on; a discrete-time model adds its schedule); `solve` then
runs `Sampler.method` over the grid `sigma_grid` builds, and `edit` inpaints, colourises or
SDEdits with the same solver (`samplers.editing`). Heun with N = 18 is 35 evaluations.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers
from diffusion_jax.errors import ConfigError
from diffusion_jax.processes import schedules
from diffusion_jax.processes.schedules import DiscreteSchedule
from diffusion_jax.samplers import ddpm, dpm_solver, editing, edm
from diffusion_jax.samplers.sampler import Sampler

SOLVERS = edm.SOLVERS + ("dpm_solver", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde", "ddim")


@dataclasses.dataclass(frozen=True)
class DenoiserModel:
    """A model as the shared solvers see it: D(x, sigma[, cond]) in the EDM convention and the
    noise levels [sigma_min, sigma_max] the default grids span; a discrete-time model's
    `schedule` sets the DDIM grid and the time axis of the DPM-Solver time grids."""

    denoiser: Callable
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    schedule: Optional[DiscreteSchedule] = None


def sigma_grid(sampler: Sampler, model: DenoiserModel) -> jax.Array:
    """The decreasing noise levels of `sampler` on `model`, ending at 0 (or at sigma_min for the
    DPM-Solvers, whose last step lands there).

    Heun / Euler / Euler-ancestral: the rho grid (Karras et al. 2022, Eq. 5). DPM-Solvers:
    `dpm_solver.dpm_sigmas` with `spacing`; on a discrete model, 'time_uniform' / 'time_quadratic'
    are uniform in its timestep index t / T (in t, resp. sqrt t), as DPM-Solver does for
    discrete-time models. 'ddim': the schedule's sigma_i at the DDIM timesteps (Song et al. 2021a,
    App. C.2; without a schedule: linear beta, T = 1000), then 0. sigma_min / sigma_max of the
    sampler, when not 0, replace the model's range.
    """
    lo, hi = sampler.sigma_min or model.sigma_min, sampler.sigma_max or model.sigma_max
    method = sampler.method
    if method in edm.SOLVERS:
        return edm.sigma_steps(sampler.num_steps, lo, hi, sampler.rho)
    if method == "ddim":
        schedule = model.schedule or schedules.make_schedule("linear", 1000)
        taus = ddpm.ddim_timesteps(schedule.num_timesteps, sampler.num_steps)
        return denoisers.grid_with_zero(denoisers.discrete_sigmas(schedule)[taus[::-1]])
    if method in ("dpm_solver", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
        maps = {} if model.schedule is None else dict(zip(
            ("sigma_of_t", "t_of_sigma"), denoisers.discrete_time_maps(model.schedule)))
        spacing = ddpm.TIME_SPACINGS.get(sampler.spacing, sampler.spacing)
        return dpm_solver.dpm_sigmas(sampler.num_steps, lo, hi, spacing, **maps)
    raise ConfigError(f"unknown solver {method!r}; valid: {', '.join(SOLVERS)}")


def grid_sampler(sampler: Sampler) -> Callable:
    """sample_fn(denoiser, rng, shape, *, sigmas, x_init=None, cond=None) running
    `sampler.method` over a given grid (x_init is the state at sigmas[0]).

    Heun / Euler / Euler-ancestral: `samplers.edm` (S_churn > 0: Algorithm 2; eta: the ancestral
    noise); 'dpm_solver': single-step DPM-Solver of `order` on noise prediction;
    'dpm_solver_pp_2m(_sde)': multistep DPM-Solver++(2M). 'ddim': deterministic DDIM, which in
    the EDM convention is exactly the Euler step on its grid (Karras et al. 2022, Sec. 3).
    """
    method = sampler.method
    if method in edm.SOLVERS or method == "ddim":
        return functools.partial(edm.edm_sample, solver="euler" if method == "ddim" else method,
                                 S_churn=sampler.S_churn, S_min=sampler.S_min,
                                 S_max=sampler.S_max, S_noise=sampler.S_noise, eta=sampler.eta)
    if method == "dpm_solver":
        return functools.partial(dpm_solver.dpm_solver_sample, order=sampler.order)
    if method in ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
        return functools.partial(dpm_solver.dpm_solver_pp_2m_sample, S_noise=sampler.S_noise,
                                 sde=method.endswith("_sde"))
    raise ConfigError(f"unknown solver {method!r}; valid: {', '.join(SOLVERS)}")


def nfe(sampler: Sampler) -> int:
    """Network evaluations of `solve` (a guided pair of branches counts once): Heun 2N - 1 (Euler
    last step), DPM-Solver order * N, the others N."""
    if sampler.method == "heun":
        return 2 * sampler.num_steps - 1
    if sampler.method == "dpm_solver":
        return sampler.order * sampler.num_steps
    return sampler.num_steps


def solve(sampler: Sampler, model: DenoiserModel, rng: jax.Array, x_init: jax.Array,
          cond=None) -> tuple[jax.Array, dict]:
    """(images, {"nfe": evaluations}) from standard-normal `x_init`: `grid_sampler(sampler)` over
    `sigma_grid(sampler, model)`, started at sigmas[0] x_init."""
    sigmas = sigma_grid(sampler, model)
    x = grid_sampler(sampler)(model.denoiser, rng, x_init.shape, sigmas=sigmas,
                              x_init=sigmas[0] * x_init, cond=cond)
    return x, {"nfe": jnp.float32(nfe(sampler))}


def edit(sampler: Sampler, model: DenoiserModel, rng: jax.Array, x: jax.Array, mask, cond=None,
         *, task: str, strength: float) -> jax.Array:
    """`editing.edit` (inpaint, colorize, sdedit) with the solver and grid of `solve`."""
    return editing.edit(grid_sampler(sampler), sigma_grid(sampler, model), model.denoiser, rng,
                        x, mask, cond, task=task, strength=strength)
