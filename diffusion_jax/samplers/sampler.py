"""One description of a sampler, built once from `config.sampling`: the solver or chain, its grid,
its stochasticity, its order, and classifier-free guidance.

Every sampling option of every family is a field here, spelled once; a method reads the fields of
the sampler it runs and ignores the rest (`docs/ARCHITECTURE.md`, "The sampler layer"). A field
left at 0 for `sigma_min` / `sigma_max` means the model's own noise-level range.
"""
from __future__ import annotations

import dataclasses
import math

from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.guidance import Guidance
from diffusion_jax.samplers import ddpm, dpm_solver, ode, pc

SPACINGS = dpm_solver.SPACINGS + ddpm.DDIM_SPACINGS
GENERIC_KEYS = ("num_samples", "batch_size", "use_ema", "seed")  # read by the sampling loop


@dataclasses.dataclass(frozen=True)
class Sampler:
    """What to run and how.

    method: a shared solver of `samplers.solvers` on the model's denoiser ('heun', 'euler',
      'euler_ancestral', 'dpm_solver', 'dpm_solver_pp_2m', 'dpm_solver_pp_2m_sde', 'ddim') or a
      chain of the method's own ('ancestral' and 'ddim' of DDPM, 'pc' and 'ode' of score SDEs,
      'onestep' and 'multistep' of consistency models, 'prior' of the autoencoder).
    Grid: num_steps, sigma_min / sigma_max (0: the model's range), rho (Karras et al. 2022,
      Eq. 5), spacing of the DPM-Solver and DDIM grids (log-SNR or uniform / quadratic in time;
      'uniform' and 'quadratic' are DDIM's names for the same time grids), sigmas (an explicit
      decreasing grid, consistency models).
    Stochasticity: S_churn, S_min, S_max, S_noise (EDM Algorithm 2); eta (ancestral noise of
      Euler-ancestral and DDIM); order of single-step DPM-Solver.
    DDPM chains: variance (sigma_t^2 = beta_t or beta-tilde_t), clip_x0.
    Score-SDE chains: eps (end time), predictor, corrector, snr, n_corrector_steps, denoise,
      ode_solver, rtol, atol.
    Autoencoder prior: temperature.
    Guidance: guidance_scale, guidance_sigma_lo / _hi, negative_label, negative_prompt.
    """

    method: str = "heun"
    num_steps: int = 18
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 7.0
    spacing: str = "logsnr"
    sigmas: tuple = ()
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0
    eta: float = 1.0
    order: int = 3
    variance: str = "beta"
    clip_x0: bool = False
    eps: float = 1e-3
    predictor: str = "euler_maruyama"
    corrector: str = "none"
    snr: float = 0.16
    n_corrector_steps: int = 1
    denoise: bool = True
    ode_solver: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    temperature: float = 1.0
    guidance_scale: float = 1.0
    guidance_sigma_lo: float = 0.0
    guidance_sigma_hi: float = math.inf
    negative_label: int = -1
    negative_prompt: str = ""

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.guidance_scale, self.guidance_sigma_lo, self.guidance_sigma_hi,
                        self.negative_label, self.negative_prompt)

    def replace(self, **changes) -> "Sampler":
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(Sampler))


def from_config(sampling_config, default: Sampler) -> Sampler:
    """`default` with every key of `config.sampling` but the generic ones (`GENERIC_KEYS`) set;
    a key that is no field of `Sampler` is a ConfigError listing the valid keys."""
    changes = {}
    for key, value in sampling_config.items():
        if key in GENERIC_KEYS:
            continue
        if key not in FIELDS:
            raise ConfigError(f"unknown key sampling.{key}; valid: "
                              f"{', '.join(sorted(FIELDS + GENERIC_KEYS))}")
        changes[key] = tuple(value) if isinstance(value, list) else value
    sampler = default.replace(**changes)
    check(sampler)
    return sampler


def check(sampler: Sampler) -> None:
    """ConfigError for a value no sampler accepts."""
    for key, what, valid in (("spacing", "grid spacing", SPACINGS),
                             ("variance", "ancestral variance", ddpm.ANCESTRAL_VARIANCES),
                             ("predictor", "predictor", pc.PREDICTORS),
                             ("corrector", "corrector", pc.CORRECTORS),
                             ("ode_solver", "ODE solver", {**ode.ADAPTIVE, **ode.FIXED_STAGES})):
        choose(f"{what} (sampling.{key})", getattr(sampler, key), valid)
    if sampler.num_steps < 1:
        raise ConfigError(f"sampling.num_steps must be >= 1, got {sampler.num_steps}")
    if sampler.order not in (1, 2, 3):
        raise ConfigError(f"sampling.order must be 1, 2 or 3, got {sampler.order}")
