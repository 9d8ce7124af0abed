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
from diffusion_jax.samplers import ddpm, dpm_solver, flow, grids, ode, pc, unipc

SPACINGS = ("karras",) + dpm_solver.SPACINGS + ddpm.DDIM_SPACINGS + grids.SPACINGS
SOLVER_PREDICTIONS = ("", "data", "noise")
GENERIC_KEYS = ("num_samples", "batch_size", "use_ema", "seed", "save_pngs")  # the launcher's


@dataclasses.dataclass(frozen=True)
class Sampler:
    """What to run and how.

    method: a shared solver of `samplers.solvers` on the model's denoiser (`solvers.SOLVERS`:
      'heun', 'euler', 'euler_ancestral', 'dpm_solver', 'dpm_solver_pp_2m',
      'dpm_solver_pp_2m_sde', 'ddim', 'unipc', 'dpm_solver_pp_3m', 'dpm_solver_pp_3m_sde',
      'dpm_solver_pp_2s_ancestral', 'lms', 'deis') or a chain of the method's own ('ancestral'
      and 'ddim' of DDPM, 'pc' and 'ode' of score SDEs, 'onestep' and 'multistep' of consistency
      models, 'prior' of the autoencoder).
    Grid (`solvers.sigma_grid`): num_steps, sigma_min / sigma_max (0: the model's range), rho
      (Karras et al. 2022, Eq. 5), spacing ('karras': the rho grid for any solver; 'logsnr',
      'time_uniform', 'time_quadratic': the DPM-Solver grids, 'uniform' and 'quadratic' DDIM's
      names for the same time grids; 'leading' / 'trailing' with steps_offset: diffusers'
      timestep spacings of a discrete-time model), sigmas (an explicit decreasing grid: any
      solver, and multistep consistency sampling) or timesteps (explicit decreasing timestep
      indices of a discrete-time model).
    Stochasticity: S_churn, S_min, S_max, S_noise (EDM Algorithm 2; S_noise also scales the
      noise of the SDE and ancestral DPM-Solvers); eta (ancestral noise of Euler-ancestral,
      DDIM, DPM-Solver++(2S) ancestral and the DPM-Solver++(3M) SDE).
    Solver options: order (0: the solver's own default: single-step DPM-Solver 3, UniPC 2,
      DEIS 2, LMS 4); solver_prediction ('data' or 'noise' model output of UniPC and single-step
      DPM-Solver; '': UniPC 'data', DPM-Solver 'noise'); unipc_variant (B(h) of UniPC, 'bh1' or
      'bh2'); disable_corrector (UniPC steps without correction); lower_order_final (the
      multistep solvers' lower orders on the last steps below 15 steps: UniPC, DEIS,
      DPM-Solver++(3M)); second_order ('heun' or 'midpoint' second step of DPM-Solver++(3M));
      taylor_d2 (DPM-Solver++(3M) of order 3 instead of the references' 2).
    DDPM chains: variance (sigma_t^2 = beta_t or beta-tilde_t), clip_x0.
    Score-SDE chains: eps (end time), predictor, corrector, snr, n_corrector_steps, denoise,
      ode_solver, rtol, atol.
    Autoencoder prior: temperature.
    Guidance: guidance_scale, guidance_sigma_lo / _hi, negative_label, negative_prompt,
      guidance_channels (> 0: only the first that many output channels are guided, the rest
      take the conditional output: DiT's and SiT's 3 of 4 latent channels; 0: all).
    Flow matching (`samplers.flow`: 'flow_euler', 'flow_heun', 'flow_dopri5' with rtol / atol,
      'flow_sde'): diffusion_form and diffusion_norm (SiT's w_t of the SDE,
      `interpolants.DIFFUSION_FORMS`), last_step ('mean', 'tweedie', 'euler', 'none') and
      last_step_size of the SDE; sample_eps (-1: SiT's default for the path and prediction).
    """

    method: str = "heun"
    num_steps: int = 18
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 7.0
    spacing: str = "logsnr"
    steps_offset: int = 0
    sigmas: tuple = ()
    timesteps: tuple = ()
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0
    eta: float = 1.0
    order: int = 0
    solver_prediction: str = ""
    unipc_variant: str = "bh2"
    disable_corrector: tuple = ()
    lower_order_final: bool = True
    second_order: str = "heun"
    taylor_d2: bool = False
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
    guidance_channels: int = 0
    # --- flow matching (samplers.flow) ---
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: str = "mean"
    last_step_size: float = 0.04
    sample_eps: float = -1.0

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.guidance_scale, self.guidance_sigma_lo, self.guidance_sigma_hi,
                        self.negative_label, self.negative_prompt, self.guidance_channels)

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
                             ("ode_solver", "ODE solver", {**ode.ADAPTIVE, **ode.FIXED_STAGES}),
                             ("solver_prediction", "solver prediction", SOLVER_PREDICTIONS),
                             ("unipc_variant", "UniPC variant", unipc.VARIANTS),
                             ("second_order", "DPM-Solver++(3M) second-order form",
                              dpm_solver.SECOND_ORDER_FORMS),
                             ("diffusion_form", "SDE diffusion form", flow.DIFFUSION_FORMS),
                             ("last_step", "SDE last step", flow.LAST_STEPS)):
        choose(f"{what} (sampling.{key})", getattr(sampler, key), valid)
    if sampler.num_steps < 1:
        raise ConfigError(f"sampling.num_steps must be >= 1, got {sampler.num_steps}")
    if sampler.order < 0 or (sampler.order > 3 and sampler.method != "lms"):
        raise ConfigError(f"sampling.order must be 1, 2 or 3 (any >= 1 for lms; 0: the solver's "
                          f"default), got {sampler.order}")
    if sampler.steps_offset and sampler.spacing != "leading":
        raise ConfigError(f"sampling.steps_offset applies to sampling.spacing='leading' only, "
                          f"got spacing {sampler.spacing!r}")
    if sampler.sigmas and sampler.timesteps:
        raise ConfigError("sampling.sigmas and sampling.timesteps each give the whole grid; "
                          "set one of them")
    if sampler.guidance_channels < 0 or sampler.last_step_size < 0:
        raise ConfigError(f"sampling.guidance_channels and sampling.last_step_size must be >= 0, "
                          f"got {sampler.guidance_channels}, {sampler.last_step_size}")
    if not all(isinstance(i, int) for i in sampler.disable_corrector):
        raise ConfigError(f"sampling.disable_corrector must be a list of step indices, got "
                          f"{list(sampler.disable_corrector)}")
