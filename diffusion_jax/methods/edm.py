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
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, guidance, preconditioning
from diffusion_jax.losses.edm import edm_loss
from diffusion_jax.processes import schedules
from diffusion_jax.processes.schedules import DiscreteSchedule
from diffusion_jax.samplers import ddpm as ddpm_samplers
from diffusion_jax.samplers import dpm_solver, edm as edm_samplers

PRECONDITIONINGS = {
    "edm": preconditioning.EDMPrecond,
    "vp": lambda sigma_data: preconditioning.VPPrecond(),
    "ve": lambda sigma_data: preconditioning.VEPrecond(),
    "iddpm": lambda sigma_data: preconditioning.IDDPMPrecond(),
}
FAST_SAMPLERS = ("heun", "euler", "euler_ancestral", "dpm_solver", "dpm_solver_pp_2m",
                 "dpm_solver_pp_2m_sde", "ddim")


def fast_sample(denoiser: Callable, rng: jax.Array, x_init: jax.Array, cond=None, *,
                method: str = "heun", num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0,
                S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0,
                eta: float = 1.0, order: int = 3, spacing: str = "logsnr",
                schedule: Optional[DiscreteSchedule] = None) -> jax.Array:
    """Images from standard-normal noise `x_init` with the denoiser D(x, sigma[, cond]).

    'heun' / 'euler' / 'euler_ancestral': `samplers.edm` on the rho grid (Eq. 5; Heun with
    N = 18 is 35 evaluations; S_churn > 0 is Algorithm 2; eta is the ancestral noise);
    'dpm_solver': single-step DPM-Solver of `order` on noise prediction; 'dpm_solver_pp_2m(_sde)':
    multistep DPM-Solver++(2M), both on the `spacing` grid from sigma_max to sigma_min. These start
    from sigma_max x_init. 'ddim': deterministic DDIM (Song et al. 2021a, eta = 0) over `num_steps`
    timesteps of `schedule` (default: the linear-beta T = 1000 schedule of Ho et al. 2020),
    starting from x_init as x_T.
    """
    shape = x_init.shape
    if method in ("heun", "euler", "euler_ancestral"):
        sigmas = edm_samplers.sigma_steps(num_steps, sigma_min, sigma_max, rho)
        return edm_samplers.edm_sample(denoiser, rng, shape, sigmas=sigmas, solver=method,
                                       S_churn=S_churn, S_min=S_min, S_max=S_max,
                                       S_noise=S_noise, eta=eta, cond=cond,
                                       x_init=sigmas[0] * x_init)
    grid = dict(num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, spacing=spacing,
                cond=cond, x_init=sigma_max * x_init)
    if method == "dpm_solver":
        return dpm_solver.dpm_solver_sample(denoiser, rng, shape, order=order, **grid)
    if method in ("dpm_solver_pp_2m", "dpm_solver_pp_2m_sde"):
        return dpm_solver.dpm_solver_pp_2m_sample(denoiser, rng, shape, S_noise=S_noise,
                                                  sde=method.endswith("_sde"), **grid)
    if method == "ddim":
        schedule = schedule if schedule is not None else schedules.make_schedule("linear", 1000)
        eps_fn = denoisers.to_discrete_eps_fn(denoiser, schedule, cond)
        return ddpm_samplers.ddim_sample(eps_fn, schedule, rng, shape, num_steps=num_steps,
                                         eta=0.0, x_init=x_init)
    raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(FAST_SAMPLERS)}")


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

    @functools.cached_property
    def scheme(self) -> Callable:
        """sigma -> (c_skip, c_out, c_in, c_noise), Table 1."""
        return PRECONDITIONINGS[self.precond](self.sigma_data)

    def init_params(self, rng: jax.Array):
        x = jnp.zeros((1,) + tuple(self.image_shape), jnp.float32)
        cond = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return jax.jit(self.model.init)(rng, x, jnp.zeros((1,)), cond)["params"]

    def apply(self, params, x, c_noise, cond=None, *, train: bool = False, rng=None):
        """The raw network F(x_in, c_noise[, cond])."""
        rngs = {"dropout": rng} if train else None
        return self.model.apply({"params": params}, x, c_noise, cond, train=train, rngs=rngs)

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
        if self.num_classes:
            cond = guidance.drop_labels(label_rng, batch["label"], self.label_dropout,
                                        self.num_classes)
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
               spacing: str = "logsnr", guidance_scale: float = 1.0):
        """Images from standard-normal `x_init` by `fast_sample`; with labels `cond` and
        guidance_scale w != 1, classifier-free guidance D_u + w (D_c - D_u) (null label =
        num_classes)."""
        D = self.conditional_denoiser(params)
        if guidance_scale != 1.0:
            if not self.num_classes or cond is None:
                raise ValueError("guidance_scale != 1 needs a class-conditional model and labels")
            D = guidance.classifier_free_guidance(D, guidance_scale, self.num_classes)
        return fast_sample(D, rng, x_init, cond, method=method, num_steps=num_steps,
                           sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, S_churn=S_churn,
                           S_min=S_min, S_max=S_max, S_noise=S_noise, eta=eta, order=order,
                           spacing=spacing)
