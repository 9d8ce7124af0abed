"""DDPM (Ho et al. 2020): the discrete forward chain, its simple loss, ancestral and DDIM sampling.

q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (Eq. 4, `processes.schedules`);
the network predicts epsilon, x0 or v; the simple loss is E ||target - prediction||^2 (Eq. 14,
mean over pixels). Besides its own chains the model runs every shared solver as a denoiser on the
schedule's sigma range.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import denoisers, guidance, variational_bound
from diffusion_jax.methods.network import NetworkMethod, train_condition
from diffusion_jax.processes import parameterization
from diffusion_jax.processes.schedules import DiscreteSchedule, marginal_coefficients, q_sample
from diffusion_jax.samplers import ddpm as ddpm_samplers
from diffusion_jax.samplers import editing, solvers
from diffusion_jax.samplers.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class DDPM(NetworkMethod):
    """The DDPM method: model + discrete schedule + prediction target."""

    model: Any  # flax module, apply(params, x, t, cond, train)
    schedule: DiscreteSchedule
    image_shape: tuple
    prediction: str = "epsilon"
    num_classes: int = 0
    label_dropout: float = 0.0
    caption_length: int = 0  # > 0: conditioned on (B, caption_length) caption tokens
    num_levels: int = 256  # pixel levels of the data, for the discretized decoder of bits/dim

    has_denoiser: ClassVar[bool] = True
    default_sampler: ClassVar[Sampler] = Sampler(method="ancestral", num_steps=1000, eta=0.0,
                                                 spacing="uniform")
    has_likelihood: ClassVar[bool] = True

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        """L_simple: t ~ U{0..T-1}, eps ~ N(0, I), mean ||target - model(x_t, t)||^2."""
        x0 = batch["image"]
        t_rng, n_rng, d_rng, l_rng = jax.random.split(rng, 4)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(n_rng, x0.shape)
        x_t = q_sample(self.schedule, x0, t, noise)
        cond = train_condition(self, batch, l_rng)
        pred = self.apply(params, x_t, t.astype(jnp.float32), cond, train=True, rng=d_rng)
        alpha, sigma = marginal_coefficients(self.schedule, t)
        target = parameterization.target(self.prediction, x0, noise, alpha, sigma)
        loss = jnp.mean((pred - target) ** 2)
        return loss, {}

    def bits_per_dim(self, params, rng, x, cond=None, *, timesteps: int = 0,
                     variance: str = "beta", clip_x0: bool = False):
        """(bits/dim (B,), NFE) of the variational bound on -log p(x) of quantised images x in
        [-1, 1] (Eq. 5; `variational_bound.vlb_bits_per_dim`): exact over all T terms, or
        unbiased from `timesteps` > 0 uniform timesteps; sigma_t^2 and `clip_x0` as in ancestral
        sampling."""
        return variational_bound.vlb_bits_per_dim(
            self.eps_fn(params, cond), self.schedule, x, rng, timesteps=timesteps,
            variance=variance, clip_x0=clip_x0, num_levels=self.num_levels)

    def prediction_fn(self, params, cond: Optional[jax.Array] = None,
                      guide: guidance.Guidance = guidance.Guidance()):
        """The network's prediction F(x_t, t[, cond]) (epsilon, x0 or v); guided as `guide` says,
        F_u + w (F_c - F_u) (`guidance.guide`, the interval in the sigma of timestep t). This
        guides eps and D alike: each is affine in F with coefficients of (x_t, t) alone
        (`parameterization`), and the weights sum to one."""
        return guidance.guide(lambda x_t, t, c=None: self.apply(params, x_t, t, c), cond,
                              self.num_classes, self.caption_length, guide,
                              sigma_of=denoisers.discrete_sigma_of_t(self.schedule))

    def eps_fn(self, params, cond: Optional[jax.Array] = None,
               guide: guidance.Guidance = guidance.Guidance()):
        """The noise prediction eps(x_t, t) of the network with the condition `cond` fixed,
        whatever its prediction target (guided as `prediction_fn` says)."""
        F = self.prediction_fn(params, cond, guide)

        def eps(x_t, t):
            alpha, sigma = marginal_coefficients(self.schedule, t)
            return parameterization.to_eps(self.prediction, denoisers.call(F, x_t, t, cond), x_t,
                                           alpha, sigma)

        return eps

    def denoiser_model(self, params, cond, aux, sampler: Sampler) -> solvers.DenoiserModel:
        """D(x, sigma[, cond]) of the network (`denoisers.from_discrete`): queried at x_t = x /
        sqrt(1 + sigma^2) and the fractional timestep whose log sigma interpolates the
        schedule's, as DPM-Solver does for discrete-time models; exact on the schedule's sigmas.
        Guided as `prediction_fn` says; range: the schedule's smallest and largest sigma."""
        D = denoisers.from_discrete(self.prediction_fn(params, cond, sampler.guidance),
                                    self.prediction, self.schedule, mode="interpolate")
        alpha_bars = np.asarray(self.schedule.alpha_bars, np.float64)[[0, -1]]
        sigma_min, sigma_max = np.sqrt((1.0 - alpha_bars) / alpha_bars)
        return solvers.DenoiserModel(D, float(sigma_min), float(sigma_max), self.schedule)

    def chains(self) -> dict:
        return {"ancestral": (self._ancestral, self._edit_chain),
                "ddim": (self._ddim, self._edit_chain)}

    def _ancestral(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """Ancestral sampling (Alg. 2) with sigma_t^2 = `variance`, `clip_x0`, over
        `num_steps` (respaced when < T)."""
        x = ddpm_samplers.ancestral_sample(
            self.eps_fn(params, cond, sampler.guidance), self.schedule, rng, x_init.shape,
            variance=sampler.variance, clip_x0=sampler.clip_x0, num_steps=sampler.num_steps,
            x_init=x_init)
        return x, {"nfe": jnp.float32(sampler.num_steps)}

    def _ddim(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """DDIM (Song et al. 2021a, Eq. 12) with `eta` over `num_steps` timesteps of `spacing`."""
        x = ddpm_samplers.ddim_sample(
            self.eps_fn(params, cond, sampler.guidance), self.schedule, rng, x_init.shape,
            num_steps=sampler.num_steps, eta=sampler.eta,
            spacing=ddpm_samplers.ddim_spacing(sampler.spacing), x_init=x_init)
        return x, {"nfe": jnp.float32(sampler.num_steps)}

    def _edit_chain(self, params, rng, x, mask, cond, aux, sampler: Sampler, task, strength):
        """Editing with a chain in its exact EDM form on the schedule's sigmas at its timesteps:
        DDIM with eta is Euler-ancestral with eta, and 'ancestral' is Euler-ancestral with eta = 1,
        the posterior step, i.e. the chain with variance beta-tilde whatever `variance` says;
        `clip_x0` is not applied when editing."""
        ddim = sampler.method == "ddim"
        taus = ddpm_samplers.ddim_timesteps(
            self.schedule.num_timesteps, sampler.num_steps,
            ddpm_samplers.ddim_spacing(sampler.spacing) if ddim else "uniform")
        sigmas = denoisers.grid_with_zero(denoisers.discrete_sigmas(self.schedule)[taus[::-1]])
        solver = sampler.replace(method="euler_ancestral", eta=sampler.eta if ddim else 1.0)
        model = self.denoiser_model(params, cond, aux, sampler)
        return editing.edit(solvers.grid_sampler(solver), sigmas, model.denoiser, rng, x, mask,
                            cond, task=task, strength=strength)
