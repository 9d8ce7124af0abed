"""DDPM (Ho et al. 2020): the discrete forward chain, its simple loss, ancestral and DDIM sampling.

q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (Eq. 4); the network predicts
epsilon, x0 or v; the simple loss is E ||target - prediction||^2 (Eq. 14, mean over pixels).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import denoisers, guidance, variational_bound
from diffusion_jax.methods import edm
from diffusion_jax.methods.network import apply_network, init_network
from diffusion_jax.processes import parameterization
from diffusion_jax.processes.schedules import DiscreteSchedule
from diffusion_jax.samplers import ddpm as ddpm_samplers


SAMPLERS = ("ancestral", "ddim") + tuple(m for m in edm.FAST_SAMPLERS if m != "ddim")


def q_sample(schedule: DiscreteSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t integer indices (B,)."""
    alpha, sigma = marginal_coefficients(schedule, t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return alpha.reshape(shape) * x0 + sigma.reshape(shape) * noise


def marginal_coefficients(schedule: DiscreteSchedule, t: jax.Array):
    """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at integer (or float) t."""
    ab = schedule.alpha_bars[jnp.asarray(t).astype(jnp.int32)]
    return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


@dataclasses.dataclass(frozen=True)
class DDPM:
    """The DDPM method: model + discrete schedule + prediction target."""

    model: Any  # flax module, apply(params, x, t, cond, train)
    schedule: DiscreteSchedule
    image_shape: tuple
    prediction: str = "epsilon"
    num_classes: int = 0
    label_dropout: float = 0.0
    caption_length: int = 0  # > 0: conditioned on (B, caption_length) caption tokens
    num_levels: int = 256  # pixel levels of the data, for the discretized decoder of bits/dim

    def init_params(self, rng: jax.Array):
        return init_network(self.model, rng, self.image_shape, jnp.zeros((1,)),
                            self.num_classes, self.caption_length)

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None):
        """The raw network F(x_t, t[, cond]), t the timestep."""
        return apply_network(self.model, params, x, t, cond, train=train, rng=rng)

    def loss(self, params, batch: dict, rng: jax.Array):
        """L_simple: t ~ U{0..T-1}, eps ~ N(0, I), mean ||target - model(x_t, t)||^2."""
        x0 = batch["image"]
        t_rng, n_rng, d_rng, l_rng = jax.random.split(rng, 4)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(n_rng, x0.shape)
        x_t = q_sample(self.schedule, x0, t, noise)
        cond = self._train_labels(batch, l_rng)
        pred = self.apply(params, x_t, t.astype(jnp.float32), cond, train=True, rng=d_rng)
        alpha, sigma = marginal_coefficients(self.schedule, t)
        target = parameterization.target(self.prediction, x0, noise, alpha, sigma)
        loss = jnp.mean((pred - target) ** 2)
        return loss, {}

    def bits_per_dim(self, params, rng, x, cond=None, *, timesteps: int = 0,
                     variance: str = "beta", clip_x0: bool = False):
        """(bits/dim (B,), NFE) of the variational bound on -log p(x) of quantised images x in
        [-1, 1] (Eq. 5; `variational_bound.bits_per_dim`): exact over all T terms, or unbiased
        from `timesteps` > 0 uniform timesteps; sigma_t^2 and `clip_x0` as in ancestral sampling."""
        return variational_bound.bits_per_dim(
            self.eps_fn(params, cond), self.schedule, x, rng, timesteps=timesteps,
            variance=variance, clip_x0=clip_x0, num_levels=self.num_levels)

    def _train_labels(self, batch, rng):
        if self.caption_length:  # a dropped caption becomes the empty caption
            return guidance.drop_labels(rng, batch["label"], self.label_dropout,
                                        guidance.null_condition(0, self.caption_length))
        if not self.num_classes:
            return None
        return guidance.drop_labels(rng, batch["label"], self.label_dropout, self.num_classes)

    def prediction_fn(self, params, cond: Optional[jax.Array] = None, **guidance_options):
        """The network's prediction F(x_t, t) (epsilon, x0 or v) with the condition `cond`; with
        the guidance options of `sample`, F_u + w (F_c - F_u) (`guidance.guide`, the interval in
        the sigma of timestep t). This guides eps and D alike: each is affine in F with
        coefficients of (x_t, t) alone (`parameterization`), and the weights sum to one."""
        F = guidance.guide(lambda x_t, t, c=None: self.apply(params, x_t, t, c), cond,
                           self.num_classes, self.caption_length,
                           sigma_of=denoisers.discrete_sigma_of_t(self.schedule),
                           **guidance_options)
        return lambda x_t, t: denoisers.call(F, x_t, t, cond)

    def eps_fn(self, params, cond: Optional[jax.Array] = None, **guidance_options):
        """The noise prediction eps(x_t, t) of the network, whatever its prediction target
        (guided as `prediction_fn` says)."""
        F = self.prediction_fn(params, cond, **guidance_options)

        def eps(x_t, t):
            alpha, sigma = marginal_coefficients(self.schedule, t)
            return parameterization.to_eps(self.prediction, F(x_t, t), x_t, alpha, sigma)

        return eps

    def denoiser(self, params, cond: Optional[jax.Array] = None, **guidance_options):
        """D(x, sigma) of the network (`denoisers.from_discrete`): queried at x_t = x / sqrt(1 +
        sigma^2) and the fractional timestep whose log sigma interpolates the schedule's, as
        DPM-Solver does for discrete-time models; exact on the schedule's sigmas. Guided as
        `prediction_fn` says."""
        return denoisers.from_discrete(self.prediction_fn(params, cond, **guidance_options),
                                       self.prediction, self.schedule, mode="interpolate")

    def conditional_denoiser(self, params):
        """D(x, sigma[, cond]) of the network (see `denoiser`), unguided."""
        return denoisers.from_discrete(lambda x_t, t, c=None: self.apply(params, x_t, t, c),
                                       self.prediction, self.schedule, mode="interpolate")

    def sample(self, params, rng, x_init, cond=None, *, method: str = "ancestral",
               num_steps: int = 1000, eta: float = 0.0, variance: str = "beta",
               clip_x0: bool = False, spacing: str = "uniform", rho: float = 7.0,
               S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf,
               S_noise: float = 1.0, order: int = 3, guidance_scale: float = 1.0,
               guidance_sigma_lo: float = 0.0, guidance_sigma_hi: float = math.inf,
               negative_label: int = -1, negative_prompt: str = ""):
        """Images from the noise `x_init` by ancestral sampling, DDIM, or an EDM fast sampler.

        'ancestral' / 'ddim': the chains of `samplers.ddpm` (`variance`, `clip_x0`; `eta`,
        `spacing` 'uniform' | 'quadratic'). Every other `method` of `edm.FAST_SAMPLERS` runs on
        `denoiser` between the schedule's smallest and largest sigma from sigma_max x_init:
        Heun / Euler / Euler-ancestral on the rho grid (`eta` = ancestral noise: 0 is Euler),
        DPM-Solvers with `spacing` 'uniform' / 'quadratic' in time t = (i + 1) / T or 'logsnr'.
        guidance_scale w != 1: classifier-free guidance eps_u + w (eps_c - eps_u) for every
        sampler, with the options of `methods.edm.EDM.sample` (`prediction_fn`).
        """
        guiding = dict(guidance_scale=guidance_scale, guidance_sigma_lo=guidance_sigma_lo,
                       guidance_sigma_hi=guidance_sigma_hi, negative_label=negative_label,
                       negative_prompt=negative_prompt)
        if method in ("ancestral", "ddim"):
            eps = self.eps_fn(params, cond, **guiding)
            if method == "ancestral":
                return ddpm_samplers.ancestral_sample(eps, self.schedule, rng, x_init.shape,
                                                      variance=variance, clip_x0=clip_x0,
                                                      num_steps=num_steps, x_init=x_init)
            return ddpm_samplers.ddim_sample(eps, self.schedule, rng, x_init.shape,
                                             num_steps=num_steps, eta=eta, spacing=spacing,
                                             x_init=x_init)
        sigmas, sample_fn = self._grid_sampler(method, num_steps, eta, spacing, rho, S_churn,
                                               S_min, S_max, S_noise, order)
        return sample_fn(self.denoiser(params, cond, **guiding), rng, x_init.shape,
                         sigmas=sigmas, x_init=sigmas[0] * x_init)

    def edit(self, params, rng, x, mask, cond=None, *, task: str, strength: float, **options):
        """Inpainting or SDEdit (the protocol's `edit`) with the configured sampler on `denoiser`.

        Each chain runs in its exact EDM form on the schedule's sigmas at its timesteps: DDIM
        with eta is Euler-ancestral with eta, and 'ancestral' is Euler-ancestral with eta = 1,
        the posterior step, i.e. the chain with variance beta-tilde whatever `variance` says;
        `clip_x0` is not applied when editing.
        """
        o = {**edm.keyword_defaults(self.sample), **options}
        if o["method"] in ("ancestral", "ddim"):
            taus = ddpm_samplers.ddim_timesteps(
                self.schedule.num_timesteps, o["num_steps"],
                o["spacing"] if o["method"] == "ddim" else "uniform")
            sigmas = denoisers.discrete_sigmas(self.schedule)[taus[::-1]]
            sigmas = jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])
            eta = o["eta"] if o["method"] == "ddim" else 1.0
            sample_fn = edm.grid_sampler("euler_ancestral", eta=eta)
        else:
            sigmas, sample_fn = self._grid_sampler(
                o["method"], o["num_steps"], o["eta"], o["spacing"], o["rho"], o["S_churn"],
                o["S_min"], o["S_max"], o["S_noise"], o["order"])
        D = self.denoiser(params, cond, **{k: o[k] for k in guidance.OPTIONS})
        return edm.edit_with_sampler(sample_fn, sigmas, D, rng, x, mask, task=task,
                                     strength=strength)

    def _grid_sampler(self, method, num_steps, eta, spacing, rho, S_churn, S_min, S_max,
                      S_noise, order):
        """(sigma grid, grid sampler) of fast sampler `method` on the schedule's sigma range."""
        if method not in edm.FAST_SAMPLERS or method == "ddim":
            raise ValueError(f"unknown DDPM sampler {method!r}; valid: {', '.join(SAMPLERS)}")
        alpha_bars = np.asarray(self.schedule.alpha_bars, np.float64)[[0, -1]]
        sigma_min, sigma_max = np.sqrt((1.0 - alpha_bars) / alpha_bars)
        dpm_spacing = {"uniform": "time_uniform", "quadratic": "time_quadratic"}.get(spacing,
                                                                                     spacing)
        sigmas = edm.sampler_sigmas(method, num_steps, float(sigma_min), float(sigma_max), rho,
                                    dpm_spacing, self.schedule)
        sample_fn = edm.grid_sampler(method, S_churn=S_churn, S_min=S_min, S_max=S_max,
                                     S_noise=S_noise, eta=eta, order=order)
        return sigmas, sample_fn
