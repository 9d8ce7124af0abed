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
from diffusion_jax.samplers import ddpm, dpm_solver, editing, edm, grids, linear_multistep, unipc
from diffusion_jax.samplers.sampler import Sampler

# the solvers whose default grid is the rho grid, and those whose default grid is DPM-Solver's
RHO_GRID_SOLVERS = edm.SOLVERS + ("dpm_solver_pp_2s_ancestral", "lms")
DPM_GRID_SOLVERS = ("dpm_solver", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde", "unipc",
                    "dpm_solver_pp_3m", "dpm_solver_pp_3m_sde", "deis")
SOLVERS = edm.SOLVERS + ("dpm_solver", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde", "ddim",
                         "unipc", "dpm_solver_pp_3m", "dpm_solver_pp_3m_sde",
                         "dpm_solver_pp_2s_ancestral", "lms", "deis")
DEFAULT_ORDERS = {"dpm_solver": 3, "unipc": 2, "deis": 2, "lms": 4}  # sampler.order = 0


@dataclasses.dataclass(frozen=True)
class DenoiserModel:
    """A model as the shared solvers see it: D(x, sigma[, cond]) in the EDM convention and the
    noise levels [sigma_min, sigma_max] the default grids span; a discrete-time model's
    `schedule` sets the DDIM, 'leading' / 'trailing' and timestep grids and the time axis of
    the DPM-Solver time grids."""

    denoiser: Callable
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    schedule: Optional[DiscreteSchedule] = None


def _discrete_schedule(model: DenoiserModel, what: str) -> DiscreteSchedule:
    if model.schedule is None:
        raise ConfigError(f"{what} needs a discrete-time model (ddpm); use sampling.sigmas or "
                          f"a spacing of karras, logsnr, time_uniform, time_quadratic")
    return model.schedule


def sigma_grid(sampler: Sampler, model: DenoiserModel) -> jax.Array:
    """The decreasing noise levels of `sampler` on `model`, ending at 0 (or at sigma_min for the
    DPM-Solver grids, whose last step lands there).

    In this order: `sigmas` as given (`grids.custom_sigmas`, checked against the model's range);
    `timesteps` of a discrete model, then 0; spacing 'leading' / 'trailing' (with
    `steps_offset`): `num_steps` timesteps of a discrete model (`grids.spaced_sigmas`), then 0;
    spacing 'karras' and the solvers of `RHO_GRID_SOLVERS` (whatever their spacing otherwise):
    the rho grid (Karras et al. 2022, Eq. 5). 'ddim': the schedule's sigma_i at the DDIM
    timesteps (Song et al. 2021a, App. C.2; without a schedule: linear beta, T = 1000), then 0.
    `DPM_GRID_SOLVERS`: `dpm_solver.dpm_sigmas` with `spacing`; on a discrete model,
    'time_uniform' / 'time_quadratic' are uniform in its timestep index t / T (in t, resp.
    sqrt t), as DPM-Solver does for discrete-time models. sigma_min / sigma_max of the sampler,
    when not 0, replace the model's range.
    """
    lo, hi = sampler.sigma_min or model.sigma_min, sampler.sigma_max or model.sigma_max
    method, spacing = sampler.method, sampler.spacing
    if method not in SOLVERS:
        raise ConfigError(f"unknown solver {method!r}; valid: {', '.join(SOLVERS)}")
    if sampler.sigmas:
        return grids.custom_sigmas(sampler.sigmas, lo, hi)
    if sampler.timesteps:
        schedule = _discrete_schedule(model, "sampling.timesteps")
        return grids.timestep_sigmas(schedule, sampler.timesteps)
    if spacing in grids.SPACINGS:
        schedule = _discrete_schedule(model, f"sampling.spacing={spacing!r}")
        return grids.spaced_sigmas(schedule, sampler.num_steps, spacing, sampler.steps_offset)
    if spacing == "karras" or method in RHO_GRID_SOLVERS:
        return edm.sigma_steps(sampler.num_steps, lo, hi, sampler.rho)
    if method == "ddim":
        schedule = model.schedule or schedules.make_schedule("linear", 1000)
        taus = ddpm.ddim_timesteps(schedule.num_timesteps, sampler.num_steps)
        return denoisers.grid_with_zero(denoisers.discrete_sigmas(schedule)[taus[::-1]])
    maps = {} if model.schedule is None else dict(zip(
        ("sigma_of_t", "t_of_sigma"), denoisers.discrete_time_maps(model.schedule)))
    return dpm_solver.dpm_sigmas(sampler.num_steps, lo, hi,
                                 ddpm.TIME_SPACINGS.get(spacing, spacing), **maps)


def order(sampler: Sampler) -> int:
    """`sampler.order`, or for 0 the solver's default (`DEFAULT_ORDERS`)."""
    return sampler.order or DEFAULT_ORDERS.get(sampler.method, 0)


def _prediction(sampler: Sampler, default: str) -> str:
    return sampler.solver_prediction or default


def grid_sampler(sampler: Sampler) -> Callable:
    """sample_fn(denoiser, rng, shape, *, sigmas, x_init=None, cond=None) running
    `sampler.method` over a given grid (x_init is the state at sigmas[0]).

    Heun / Euler / Euler-ancestral: `samplers.edm` (S_churn > 0: Algorithm 2; eta: the ancestral
    noise); 'dpm_solver': single-step DPM-Solver of `order` on noise prediction (data
    prediction, DPM-Solver++: solver_prediction='data'); 'dpm_solver_pp_2m(_sde)': multistep
    DPM-Solver++(2M). 'ddim': deterministic DDIM, which in the EDM convention is exactly the
    Euler step on its grid (Karras et al. 2022, Sec. 3). 'unipc': `unipc.unipc_sample`;
    'dpm_solver_pp_3m': DPM-Solver++(3M) (eta = 0), 'dpm_solver_pp_3m_sde' its SDE form with
    `eta`; 'dpm_solver_pp_2s_ancestral' with `eta`; 'lms', 'deis': `samplers.linear_multistep`.
    """
    method = sampler.method
    if method in edm.SOLVERS or method == "ddim":
        return functools.partial(edm.edm_sample, solver="euler" if method == "ddim" else method,
                                 S_churn=sampler.S_churn, S_min=sampler.S_min,
                                 S_max=sampler.S_max, S_noise=sampler.S_noise, eta=sampler.eta)
    if method == "dpm_solver":
        return functools.partial(dpm_solver.dpm_solver_sample, order=order(sampler),
                                 prediction=_prediction(sampler, "noise"))
    if method in ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
        return functools.partial(dpm_solver.dpm_solver_pp_2m_sample, S_noise=sampler.S_noise,
                                 sde=method.endswith("_sde"))
    if method == "unipc":
        return functools.partial(unipc.unipc_sample, order=order(sampler),
                                 variant=sampler.unipc_variant,
                                 prediction=_prediction(sampler, "data"),
                                 lower_order_final=sampler.lower_order_final,
                                 disable_corrector=tuple(sampler.disable_corrector))
    if method in ("dpm_solver_pp_3m", "dpm_solver_pp_3m_sde"):
        return functools.partial(dpm_solver.dpm_solver_pp_3m_sample,
                                 eta=sampler.eta if method.endswith("_sde") else 0.0,
                                 S_noise=sampler.S_noise, second_order=sampler.second_order,
                                 lower_order_final=sampler.lower_order_final,
                                 taylor_d2=sampler.taylor_d2)
    if method == "dpm_solver_pp_2s_ancestral":
        return functools.partial(dpm_solver.dpm_solver_pp_2s_ancestral_sample, eta=sampler.eta,
                                 S_noise=sampler.S_noise)
    if method == "lms":
        return functools.partial(linear_multistep.lms_sample, order=order(sampler))
    if method == "deis":
        return functools.partial(linear_multistep.deis_sample, order=order(sampler),
                                 lower_order_final=sampler.lower_order_final)
    raise ConfigError(f"unknown solver {method!r}; valid: {', '.join(SOLVERS)}")


def nfe(sampler: Sampler, sigmas: jax.Array) -> jax.Array:
    """Network evaluations of `grid_sampler(sampler)` over `sigmas` (a guided pair of branches is
    one batched call and counts once; traceable): Heun 2 per step and 1 onto sigma = 0,
    single-step DPM-Solver `order` per step and 1 onto 0, DPM-Solver++(2S) ancestral 2 per step
    and 1 where sigma_down = 0 (`dpm_solver.dpm_solver_pp_2s_ancestral_nfe`), the others 1 per
    step."""
    sigmas = jnp.asarray(sigmas)
    onto_zero = jnp.sum(sigmas[1:] == 0)
    steps = sigmas.shape[0] - 1
    if sampler.method == "heun":
        return 2 * steps - onto_zero
    if sampler.method == "dpm_solver":
        return order(sampler) * steps - (order(sampler) - 1) * onto_zero
    if sampler.method == "dpm_solver_pp_2s_ancestral":
        return dpm_solver.dpm_solver_pp_2s_ancestral_nfe(sigmas, sampler.eta)
    return jnp.asarray(steps)


def check(sampler: Sampler, model: DenoiserModel) -> None:
    """ConfigError now for a grid or option that `solve` would reject: the grid is built once."""
    sigma_grid(sampler, model)
    grid_sampler(sampler)


def solve(sampler: Sampler, model: DenoiserModel, rng: jax.Array, x_init: jax.Array,
          cond=None) -> tuple[jax.Array, dict]:
    """(images, {"nfe": evaluations}) from standard-normal `x_init`: `grid_sampler(sampler)` over
    `sigma_grid(sampler, model)`, started at sigmas[0] x_init."""
    sigmas = sigma_grid(sampler, model)
    x = grid_sampler(sampler)(model.denoiser, rng, x_init.shape, sigmas=sigmas,
                              x_init=sigmas[0] * x_init, cond=cond)
    return x, {"nfe": nfe(sampler, sigmas).astype(jnp.float32)}


def edit(sampler: Sampler, model: DenoiserModel, rng: jax.Array, x: jax.Array, mask, cond=None,
         *, task: str, strength: float) -> jax.Array:
    """`editing.edit` (inpaint, colorize, sdedit) with the solver and grid of `solve`."""
    return editing.edit(grid_sampler(sampler), sigma_grid(sampler, model), model.denoiser, rng,
                        x, mask, cond, task=task, strength=strength)
