"""Noise-level grids of discrete-time models and custom grids, for the grid samplers.

The continuous grids live with their samplers: the rho grid of Karras et al. 2022, Eq. 5
(`edm.sigma_steps`) and the log-SNR-uniform, time-uniform and time-quadratic grids of DPM-Solver
(`dpm_solver.dpm_sigmas`). Here: the "leading" and "trailing" timestep spacings of a
`DiscreteSchedule` (Lin et al. 2024, Table 2; diffusers' `timestep_spacing`), a given list of
timesteps, and a given list of noise levels (Align Your Steps, Sabour et al. 2024), each checked
and returned as decreasing EDM noise levels sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i),
optionally ending at 0.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.processes.schedules import DiscreteSchedule

SPACINGS = ("leading", "trailing", "adm")
FINALS = ("zero", "sigma_min", "none")


def spaced_timesteps(num_timesteps: int, num_steps: int, spacing: str,
                     steps_offset: int = 0) -> np.ndarray:
    """num_steps decreasing timestep indices of a T-step chain (0-based, t = index + 1 of the papers).

    'leading': index_i = i floor(T / N) + steps_offset, i < N (Lin et al. 2024, Table 2; diffusers'
    DDIM, PNDM, Euler and LMS schedulers, whose Stable Diffusion configs set steps_offset = 1);
    'trailing': index_i = round(T - i T / N) - 1, which starts at the last timestep T - 1 (Table 2;
    what zero terminal SNR needs); 'adm': the respacing of the improved-DDPM / ADM / DiT code
    (`space_timesteps(T, "N")`), index_i = round(i (T - 1) / (N - 1)) accumulated in floats as
    that code does, so it ends at T - 1 (DiT's 250 steps: 0, 4, 8, ..., 999). diffusers'
    multistep schedulers (DPM-Solver, UniPC, DEIS) space 'leading' over N + 1 points instead;
    pass their timesteps to `timestep_sigmas` to use them.
    """
    choose("timestep spacing", spacing, SPACINGS)
    if not 1 <= num_steps <= num_timesteps:
        raise ConfigError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if steps_offset and spacing != "leading":
        raise ConfigError("steps_offset applies to 'leading' spacing only")
    if spacing == "leading":
        timesteps = np.arange(num_steps)[::-1] * (num_timesteps // num_steps) + steps_offset
    elif spacing == "adm":
        timesteps = np.asarray(_adm_steps(num_timesteps, num_steps))[::-1]
    else:
        timesteps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
    return timesteps.astype(np.int64)


def _adm_steps(num_timesteps: int, num_steps: int) -> list:
    """The increasing timesteps of ADM's `space_timesteps` for one section of `num_steps`: the
    index starts at 0 and grows by (T - 1) / (N - 1) in float64, each rounded half to even."""
    stride = 1.0 if num_steps <= 1 else (num_timesteps - 1) / (num_steps - 1)
    steps, index = [], 0.0
    for _ in range(num_steps):
        steps.append(round(index))
        index += stride
    return steps


def _final(sigmas: np.ndarray, sigma_min: float, final: str) -> np.ndarray:
    choose("final noise level", final, FINALS)
    if final == "none":
        return sigmas
    return np.concatenate([sigmas, [0.0 if final == "zero" else sigma_min]])


def timestep_sigmas(schedule: DiscreteSchedule, timesteps, final: str = "zero"):
    """The schedule's sigma at each of `timesteps` (strictly decreasing indices in [0, T)), then
    `final`: 'zero' appends 0 (the last step is x = D), 'sigma_min' the sigma of index 0 (diffusers'
    final_sigmas_type), 'none' nothing."""
    timesteps = np.asarray(timesteps)
    if timesteps.ndim != 1 or timesteps.size == 0 or not np.issubdtype(timesteps.dtype, np.integer):
        raise ConfigError(f"timesteps must be a non-empty list of integers, got {timesteps.tolist()}")
    if np.any(np.diff(timesteps) >= 0):
        raise ConfigError(f"timesteps must be strictly decreasing, got {timesteps.tolist()}")
    if timesteps[0] >= schedule.num_timesteps or timesteps[-1] < 0:
        raise ConfigError(f"timesteps must lie in [0, {schedule.num_timesteps - 1}], "
                          f"got {timesteps.tolist()}")
    alpha_bars = np.asarray(schedule.alpha_bars, np.float64)
    all_sigmas = np.sqrt((1.0 - alpha_bars) / alpha_bars)
    return jnp.asarray(_final(all_sigmas[timesteps], all_sigmas[0], final))


def spaced_sigmas(schedule: DiscreteSchedule, num_steps: int, spacing: str,
                  steps_offset: int = 0, final: str = "zero"):
    """`timestep_sigmas` at the `spaced_timesteps` of the schedule: num_steps + 1 values for
    final 'zero' or 'sigma_min'."""
    timesteps = spaced_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
    return timestep_sigmas(schedule, timesteps, final)


def custom_sigmas(sigmas, sigma_min: float, sigma_max: float, rtol: float = 1e-2):
    """A grid given as a list (Align Your Steps' published schedules), checked: strictly decreasing,
    positive except a last 0, and inside the model's [sigma_min, sigma_max] up to a relative
    `rtol` (published lists are rounded, e.g. Stable Diffusion's 0.029 for sigma_min = 0.0292)."""
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or sigmas.size < 2:
        raise ConfigError(f"a sigma grid needs at least two values, got {sigmas.tolist()}")
    if np.any(np.diff(sigmas) >= 0):
        raise ConfigError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
    positive = sigmas[:-1] if sigmas[-1] == 0.0 else sigmas
    if positive[-1] <= 0.0:
        raise ConfigError(f"sigmas must be positive except a last 0, got {sigmas.tolist()}")
    if positive[0] > sigma_max * (1 + rtol) or positive[-1] < sigma_min * (1 - rtol):
        raise ConfigError(f"sigmas must lie in the model's range [{sigma_min:g}, {sigma_max:g}], "
                          f"got {sigmas.tolist()}")
    return jnp.asarray(sigmas)


def loglinear_interp(sigmas, num_steps: int):
    """num_steps values whose log interpolates the log of the positive `sigmas` linearly over an
    even ramp: a tuned grid (Align Your Steps' 10-step lists) stretched to another step count, as
    its authors do; a last 0 is kept."""
    sigmas = np.asarray(sigmas, np.float64)
    zero = sigmas[-1] == 0.0
    positive = sigmas[:-1] if zero else sigmas
    ramp = np.linspace(0.0, 1.0, positive.size)
    out = np.exp(np.interp(np.linspace(0.0, 1.0, num_steps), ramp, np.log(positive)))
    return jnp.asarray(np.concatenate([out, [0.0]]) if zero else out)
