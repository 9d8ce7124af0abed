"""EDM (Karras et al. 2022): a preconditioned denoiser, its weighted loss and the fast samplers.

D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Eq. 7) with the coefficients of one column
of Table 1; the network F sees c_noise as its noise input. Training minimises
E lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 with ln sigma ~ N(P_mean, P_std^2) (Eq. 2 and
Table 1). `fast_sample` runs any denoiser through the EDM, DPM-Solver and DDIM samplers, so
every method that can state its model as a denoiser shares them.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, guidance, preconditioning
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses.edm import edm_loss
from diffusion_jax.methods.network import apply_network, init_network
from diffusion_jax.processes import schedules
from diffusion_jax.processes.schedules import DiscreteSchedule
from diffusion_jax.samplers import ddpm as ddpm_samplers
from diffusion_jax.samplers import dpm_solver, editing, edm as edm_samplers

PRECONDITIONINGS = {
    "edm": preconditioning.EDMPrecond,
    "vp": lambda sigma_data: preconditioning.VPPrecond(),
    "ve": lambda sigma_data: preconditioning.VEPrecond(),
    "iddpm": lambda sigma_data: preconditioning.IDDPMPrecond(),
}
FAST_SAMPLERS = ("heun", "euler", "euler_ancestral", "dpm_solver", "dpm_solver_pp_2m",
                 "dpm_solver_pp_2m_sde", "ddim")


def sampler_sigmas(method: str = "heun", num_steps: int = 18, sigma_min: float = 0.002,
                   sigma_max: float = 80.0, rho: float = 7.0, spacing: str = "logsnr",
                   schedule: Optional[DiscreteSchedule] = None) -> jax.Array:
    """The decreasing noise-level grid of sampler `method`, ending at 0 (or at sigma_min for the
    DPM-Solvers, whose last step lands there).

    'heun' / 'euler' / 'euler_ancestral': the rho grid (Eq. 5). DPM-Solvers: `dpm_solver.dpm_sigmas`
    with `spacing`; with a `schedule`, 'time_uniform' / 'time_quadratic' are uniform in its
    timestep index t / T (in t, resp. sqrt t), as DPM-Solver does for discrete-time models.
    'ddim': the schedule's sigma_i at the DDIM timesteps tau (Song et al. 2021a, App. C.2; default
    schedule: linear beta, T = 1000), then 0.
    """
    if method in edm_samplers.SOLVERS:
        return edm_samplers.sigma_steps(num_steps, sigma_min, sigma_max, rho)
    if method == "ddim":
        schedule = schedule if schedule is not None else schedules.make_schedule("linear", 1000)
        taus = ddpm_samplers.ddim_timesteps(schedule.num_timesteps, num_steps)
        sigmas = denoisers.discrete_sigmas(schedule)[taus[::-1]]
        return jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])
    if method in ("dpm_solver", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
        maps = {} if schedule is None else dict(zip(("sigma_of_t", "t_of_sigma"),
                                                    denoisers.discrete_time_maps(schedule)))
        return dpm_solver.dpm_sigmas(num_steps, sigma_min, sigma_max, spacing, **maps)
    raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(FAST_SAMPLERS)}")


def grid_sampler(method: str = "heun", *, S_churn: float = 0.0, S_min: float = 0.0,
                 S_max: float = math.inf, S_noise: float = 1.0, eta: float = 1.0,
                 order: int = 3) -> Callable:
    """sample_fn(denoiser, rng, shape, *, sigmas, x_init=None, cond=None) running `method` over
    the given grid (the interface of `samplers.editing`; x_init is the state at sigmas[0]).

    'heun' / 'euler' / 'euler_ancestral': `samplers.edm` (S_churn > 0: Algorithm 2; eta: the
    ancestral noise); 'dpm_solver': single-step DPM-Solver of `order` on noise prediction;
    'dpm_solver_pp_2m(_sde)': multistep DPM-Solver++(2M). 'ddim': deterministic DDIM, which in
    the EDM convention is exactly the Euler step on its grid (Karras et al. 2022, Sec. 3).
    """
    if method in edm_samplers.SOLVERS or method == "ddim":
        solver = "euler" if method == "ddim" else method
        return functools.partial(edm_samplers.edm_sample, solver=solver, S_churn=S_churn,
                                 S_min=S_min, S_max=S_max, S_noise=S_noise, eta=eta)
    if method == "dpm_solver":
        return functools.partial(dpm_solver.dpm_solver_sample, order=order)
    if method in ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
        return functools.partial(dpm_solver.dpm_solver_pp_2m_sample, S_noise=S_noise,
                                 sde=method.endswith("_sde"))
    raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(FAST_SAMPLERS)}")


def fast_sample(denoiser: Callable, rng: jax.Array, x_init: jax.Array, cond=None, *,
                method: str = "heun", num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0,
                S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0,
                eta: float = 1.0, order: int = 3, spacing: str = "logsnr",
                schedule: Optional[DiscreteSchedule] = None) -> jax.Array:
    """Images from standard-normal noise `x_init` with the denoiser D(x, sigma[, cond]): the
    sampler `grid_sampler(method, ...)` over `sampler_sigmas(method, ...)`, started at
    sigmas[0] x_init (Heun with N = 18 is 35 evaluations)."""
    sigmas = sampler_sigmas(method, num_steps, sigma_min, sigma_max, rho, spacing, schedule)
    sample_fn = grid_sampler(method, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise,
                             eta=eta, order=order)
    return sample_fn(denoiser, rng, x_init.shape, sigmas=sigmas, x_init=sigmas[0] * x_init,
                     cond=cond)


EDIT_TASKS = ("inpaint", "sdedit")


def keyword_defaults(fn: Callable) -> dict:
    """The keyword-only arguments of `fn` with their defaults (a method's sampling options)."""
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}


def edit_with_sampler(sample_fn: Callable, sigmas: jax.Array, denoiser: Callable, rng, x, mask,
                      cond=None, *, task: str, strength: float) -> jax.Array:
    """The protocol's `edit` on top of a grid sampler: 'inpaint' (mask True = known pixel, kept
    exactly at every step) or 'sdedit' (noise to `strength` of the grid, then denoise)."""
    sample_fn = functools.partial(sample_fn, sigmas=sigmas, cond=cond)
    if task == "inpaint":
        return editing.inpaint(sample_fn, denoiser, rng, x, mask)
    if task == "sdedit":
        return editing.sdedit(sample_fn, denoiser, rng, x, strength=strength, sigmas=sigmas)
    raise ConfigError(f"unknown edit task {task!r} for this method; valid: {', '.join(EDIT_TASKS)}")


def fast_sample_nfe(method: str, num_steps: int, order: int = 3) -> int:
    """Network evaluations of `fast_sample`: Heun 2N - 1 (Euler last step), DPM-Solver
    order * N, the others N."""
    if method == "heun":
        return 2 * num_steps - 1
    if method == "dpm_solver":
        return order * num_steps
    return num_steps


@dataclasses.dataclass(frozen=True)
class EDM:
    """The EDM method: raw network F + preconditioning `precond` ('edm' | 'vp' | 've' | 'iddpm')."""

    model: Any  # flax module, apply(params, x, c_noise, cond, train)
    image_shape: tuple
    num_classes: int = 0
    label_dropout: float = 0.0
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    precond: str = "edm"
    caption_length: int = 0  # > 0: conditioned on (B, caption_length) caption tokens

    @functools.cached_property
    def scheme(self) -> Callable:
        """sigma -> (c_skip, c_out, c_in, c_noise), Table 1."""
        return PRECONDITIONINGS[self.precond](self.sigma_data)

    def init_params(self, rng: jax.Array):
        return init_network(self.model, rng, self.image_shape, jnp.zeros((1,)),
                            self.num_classes, self.caption_length)

    def apply(self, params, x, c_noise, cond=None, *, train: bool = False, rng=None):
        """The raw network F(x_in, c_noise[, cond])."""
        return apply_network(self.model, params, x, c_noise, cond, train=train, rng=rng)

    def conditional_denoiser(self, params, *, train: bool = False, rng=None):
        """D(x, sigma[, cond]) = c_skip x + c_out F(c_in x, c_noise[, cond]) (Eq. 7)."""
        F = lambda x, c_noise, cond=None: self.apply(params, x, c_noise, cond, train=train, rng=rng)
        return preconditioning.precondition(F, self.scheme)

    def denoiser(self, params, cond=None):
        """D(x, sigma) with the condition `cond` fixed (None: unconditional / null label)."""
        D = self.conditional_denoiser(params)
        return lambda x, sigma: denoisers.call(D, x, sigma, cond)

    def loss(self, params, batch: dict, rng: jax.Array):
        """Batch mean of lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 (summed over pixels),
        ln sigma ~ N(P_mean, P_std^2), lambda = (sigma^2 + sd^2) / (sigma sd)^2 (Table 1)."""
        loss_rng, dropout_rng, label_rng = jax.random.split(rng, 3)
        cond = None
        if self.num_classes or self.caption_length:  # a dropped caption is the empty caption
            cond = guidance.drop_labels(label_rng, batch["label"], self.label_dropout,
                                        guidance.null_condition(self.num_classes,
                                                                self.caption_length))
        per_example = edm_loss(
            self.conditional_denoiser(params, train=True, rng=dropout_rng), batch["image"],
            loss_rng, cond,
            sample_sigma=functools.partial(preconditioning.lognormal_sigma, P_mean=self.P_mean,
                                           P_std=self.P_std),
            loss_weight=functools.partial(preconditioning.edm_loss_weight,
                                          sigma_data=self.sigma_data))
        return jnp.mean(per_example), {}

    def sample(self, params, rng, x_init, cond=None, *, method: str = "heun",
               num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0,
               S_max: float = math.inf, S_noise: float = 1.0, eta: float = 1.0, order: int = 3,
               spacing: str = "logsnr", guidance_scale: float = 1.0,
               guidance_sigma_lo: float = 0.0, guidance_sigma_hi: float = math.inf,
               negative_label: int = -1, negative_prompt: str = ""):
        """Images from standard-normal `x_init` by `fast_sample`.

        With labels `cond` and guidance_scale w != 1: classifier-free guidance D_u + w (D_c - D_u)
        in one batched network call, where D_u has the null label num_classes, or
        `negative_label` when >= 0 (negative conditioning); only for sigma in
        [guidance_sigma_lo, guidance_sigma_hi] (Kynkaenniemi et al. 2024), D_c elsewhere.
        A caption-conditional model (cond = caption tokens) guides away from the empty caption,
        or from `negative_prompt` when it is not empty.
        """
        options = dict(method=method, num_steps=num_steps, sigma_min=sigma_min,
                       sigma_max=sigma_max, rho=rho, S_churn=S_churn, S_min=S_min, S_max=S_max,
                       S_noise=S_noise, eta=eta, order=order, spacing=spacing,
                       guidance_scale=guidance_scale, guidance_sigma_lo=guidance_sigma_lo,
                       guidance_sigma_hi=guidance_sigma_hi, negative_label=negative_label,
                       negative_prompt=negative_prompt)
        sigmas, sample_fn, D = self._sampler(params, cond, **options)
        return sample_fn(D, rng, x_init.shape, sigmas=sigmas, x_init=sigmas[0] * x_init,
                         cond=cond)

    def edit(self, params, rng, x, mask, cond=None, *, task: str, strength: float, **options):
        """Inpainting or SDEdit of images `x` (the protocol's `edit`) with the sampler that
        `sample` runs for the same `options`."""
        sigmas, sample_fn, D = self._sampler(params, cond,
                                             **{**keyword_defaults(self.sample), **options})
        return edit_with_sampler(sample_fn, sigmas, D, rng, x, mask, cond, task=task,
                                 strength=strength)

    def _sampler(self, params, cond, *, method, num_steps, sigma_min, sigma_max, rho, S_churn,
                 S_min, S_max, S_noise, eta, order, spacing, **guidance_options):
        """(sigma grid, grid sampler, denoiser D(x, sigma, cond)) for the sampling options."""
        D = guidance.guide(self.conditional_denoiser(params), cond, self.num_classes,
                           self.caption_length, **guidance_options)
        sigmas = sampler_sigmas(method, num_steps, sigma_min, sigma_max, rho, spacing)
        sample_fn = grid_sampler(method, S_churn=S_churn, S_min=S_min, S_max=S_max,
                                 S_noise=S_noise, eta=eta, order=order)
        return sigmas, sample_fn, D
