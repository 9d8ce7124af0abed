"""DDPM (Ho et al. 2020): the discrete forward chain, its simple loss, ancestral and DDIM sampling.

q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (Eq. 4, `processes.schedules`);
the network predicts epsilon, x0 or v; the simple loss is E ||target - prediction||^2 (Eq. 14,
mean over pixels), optionally weighted per timestep by a function of SNR_t (`losses.weighting`).
Besides its own chains the model runs every shared solver as a denoiser on the schedule's sigma
range. With `learn_sigma` (a network of twice the data's channels, DiT's) the second half is
the variance output v of improved DDPM (Nichol & Dhariwal 2021, Eq. 15, 'learned range'),
trained with their hybrid loss L_simple + L_vlb (the bound's term in bits per dimension, the
mean under stop-gradient: DiT's `training_losses`; their lambda = 0.001 at T = 1000) and used by
the ancestral chain with `sampling.variance='learned'`. A zero-terminal-SNR schedule (alpha_bar_T = 0, Lin et al. 2024) trains as it is and
samples on `schedules.clip_terminal_alpha_bar` of it, with the shared solvers only.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import denoisers, guidance, variational_bound
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses.weighting import Weighting, snr_of_alpha_bar
from diffusion_jax.methods.network import NetworkMethod, train_condition
from diffusion_jax.processes import parameterization, schedules
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
    loss_weighting: Weighting = Weighting()  # of the squared error, by SNR_t
    learn_sigma: bool = False  # the network's second half of channels is the variance output v

    has_denoiser: ClassVar[bool] = True
    default_sampler: ClassVar[Sampler] = Sampler(method="ancestral", num_steps=1000, eta=0.0,
                                                 spacing="uniform")
    has_likelihood: ClassVar[bool] = True

    @functools.cached_property
    def zero_terminal_snr(self) -> bool:
        """alpha_bar_T = 0: x_T is pure noise (`schedules.rescale_zero_terminal_snr`)."""
        return float(np.asarray(self.schedule.alpha_bars)[-1]) == 0.0

    @functools.cached_property
    def sampling_schedule(self) -> DiscreteSchedule:
        """The schedule of the denoiser and the grids: `schedule`, or with zero terminal SNR its
        clipped form with alpha_bar_T = 2^-24 (sigma_T = 4096, `clip_terminal_alpha_bar`)."""
        if self.zero_terminal_snr:
            return schedules.clip_terminal_alpha_bar(self.schedule)
        return self.schedule

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        """L_simple: t ~ U{0..T-1}, eps ~ N(0, I), mean ||target - model(x_t, t)||^2; with a
        `loss_weighting` other than 'uniform', the batch mean of w(SNR_t) times each example's
        mean squared error."""
        x0 = batch["image"]
        t_rng, n_rng, d_rng, l_rng = jax.random.split(rng, 4)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(n_rng, x0.shape)
        x_t = q_sample(self.schedule, x0, t, noise)
        cond = train_condition(self, batch, l_rng)
        pred = self.apply(params, x_t, t.astype(jnp.float32), cond, train=True, rng=d_rng)
        alpha, sigma = marginal_coefficients(self.schedule, t)
        target = parameterization.target(self.prediction, x0, noise, alpha, sigma)
        vb = None
        if self.learn_sigma:
            pred, v = jnp.split(pred, 2, axis=-1)
            vb = self.variance_bound_term(x0, x_t, t, jax.lax.stop_gradient(pred), v)
        if self.loss_weighting.name == "uniform" and vb is None:
            return jnp.mean((pred - target) ** 2), {}
        per_example = jnp.mean(jnp.square(pred - target).reshape(x0.shape[0], -1), axis=-1)
        weight = self.loss_weighting(snr_of_alpha_bar(self.schedule.alpha_bars[t]),
                                     self.prediction)
        if vb is None:
            return jnp.mean(weight * per_example), {}
        return jnp.mean(weight * per_example + vb), {"vb": jnp.mean(vb)}

    def variance_bound_term(self, x0, x_t, t, pred, v):
        """L_vlb of the hybrid loss per example: the bound's term at t (`variational_bound.
        term_nats`: L_{t-1}, or L_0 at t = 0) of p_theta(x_{t-1} | x_t) with the mean of the
        prediction `pred` and the learned log variance of v, in bits per dimension (DiT's
        `_vb_terms_bpd`; the mean is passed stop-gradient by `loss`)."""
        alpha, sigma = marginal_coefficients(self.schedule, t)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        x0_hat = parameterization.to_x0(self.prediction, pred, x_t, alpha.reshape(shape),
                                        sigma.reshape(shape))
        log_var = schedules.learned_log_variance(self.schedule, t, v)
        nats = variational_bound.term_nats(self.schedule, x0, x0_hat, t, log_var,
                                           self.num_levels)
        return nats / (np.prod(x0.shape[1:]) * np.log(2.0))

    def bits_per_dim(self, params, rng, x, cond=None, *, timesteps: int = 0,
                     variance: str = "beta", clip_x0: bool = False):
        """(bits/dim (B,), NFE) of the variational bound on -log p(x) of quantised images x in
        [-1, 1] (Eq. 5; `variational_bound.vlb_bits_per_dim`): exact over all T terms, or
        unbiased from `timesteps` > 0 uniform timesteps; sigma_t^2 and `clip_x0` as in ancestral
        sampling."""
        self._check_variance(variance)
        return variational_bound.vlb_bits_per_dim(
            self.eps_fn(params, cond, with_variance=variance == "learned"), self.schedule, x,
            rng, timesteps=timesteps, variance=variance, clip_x0=clip_x0,
            num_levels=self.num_levels)

    def prediction_fn(self, params, cond: Optional[jax.Array] = None,
                      guide: guidance.Guidance = guidance.Guidance()):
        """The network's prediction F(x_t, t[, cond]) (epsilon, x0 or v); guided as `guide` says,
        F_u + w (F_c - F_u) (`guidance.guide`, the interval in the sigma of timestep t). This
        guides eps and D alike: each is affine in F with coefficients of (x_t, t) alone
        (`parameterization`), and the weights sum to one."""
        F = self._guided_network(params, cond, guide)
        if not self.learn_sigma:
            return F
        return lambda x_t, t, c=None: denoisers.call(F, x_t, t, c)[..., :x_t.shape[-1]]

    def _guided_network(self, params, cond, guide: guidance.Guidance):
        """The whole network output, guided; with `learn_sigma` on at most the prediction's
        channels, the variance output v kept conditional (DiT's `forward_with_cfg`)."""
        if self.learn_sigma:
            guide = dataclasses.replace(guide, channels=guide.channels or self.image_shape[-1])
        return guidance.guide(lambda x_t, t, c=None: self.apply(params, x_t, t, c), cond,
                              self.num_classes, self.caption_length, guide,
                              sigma_of=denoisers.discrete_sigma_of_t(self.schedule))

    def eps_fn(self, params, cond: Optional[jax.Array] = None,
               guide: guidance.Guidance = guidance.Guidance(), *, with_variance: bool = False):
        """The noise prediction eps(x_t, t) of the network with the condition `cond` fixed,
        whatever its prediction target (guided as `prediction_fn` says); `with_variance`: eps
        and the variance output v of a `learn_sigma` network concatenated on the last axis."""
        F = (self._guided_network if with_variance else self.prediction_fn)(params, cond, guide)

        def eps(x_t, t):
            alpha, sigma = marginal_coefficients(self.schedule, t)
            out = denoisers.call(F, x_t, t, cond)
            channels = x_t.shape[-1]
            e = parameterization.to_eps(self.prediction, out[..., :channels], x_t, alpha, sigma)
            return jnp.concatenate([e, out[..., channels:]], axis=-1) if with_variance else e

        return eps

    def denoiser_model(self, params, cond, aux, sampler: Sampler) -> solvers.DenoiserModel:
        """D(x, sigma[, cond]) of the network (`denoisers.from_discrete`): queried at x_t = x /
        sqrt(1 + sigma^2) and the fractional timestep whose log sigma interpolates the
        schedule's, as DPM-Solver does for discrete-time models; exact on the schedule's sigmas.
        Guided as `prediction_fn` says; range: the smallest and largest sigma of
        `sampling_schedule`."""
        schedule = self.sampling_schedule
        D = denoisers.from_discrete(self.prediction_fn(params, cond, sampler.guidance),
                                    self.prediction, schedule, mode="interpolate")
        alpha_bars = np.asarray(schedule.alpha_bars, np.float64)[[0, -1]]
        sigma_min, sigma_max = np.sqrt((1.0 - alpha_bars) / alpha_bars)
        return solvers.DenoiserModel(D, float(sigma_min), float(sigma_max), schedule)

    def chains(self) -> dict:
        return {"ancestral": (self._ancestral, self._edit_chain),
                "ddim": (self._ddim, self._edit_chain)}

    def check_sampler(self, sampler: Sampler) -> None:
        """The shared solvers' check, and for the chains a ConfigError for what they cannot
        follow: zero terminal SNR (their steps divide by alpha_T = 0; the shared solvers run on
        the clipped schedule), and for 'ddim' a grid other than DDIM's own uniform or quadratic
        timesteps."""
        self._check_variance(sampler.variance)
        if sampler.method not in self.chains():
            return super().check_sampler(sampler)
        if self.zero_terminal_snr:
            raise ConfigError(f"sampler {sampler.method!r} divides by alpha_T = 0 of the "
                              f"zero-terminal-SNR schedule; use a shared solver (e.g. euler, "
                              f"which is DDIM, or unipc) with sampling.spacing='trailing'")
        if sampler.method == "ancestral" and (
                sampler.sigmas or sampler.timesteps or
                sampler.spacing not in ddpm_samplers.ANCESTRAL_SPACINGS):
            raise ConfigError(f"DDPM's ancestral chain runs on the timesteps of "
                              f"sampling.spacing in {', '.join(ddpm_samplers.ANCESTRAL_SPACINGS)}"
                              f", got {sampler.spacing!r} (sigmas or timesteps lists: use a "
                              f"shared solver, e.g. euler_ancestral)")
        if sampler.method == "ddim" and (
                sampler.sigmas or sampler.timesteps or
                ddpm_samplers.ddim_spacing(sampler.spacing) not in ddpm_samplers.DDIM_SPACINGS):
            raise ConfigError(f"DDPM's ddim chain runs on its uniform or quadratic timesteps "
                              f"(sampling.spacing={sampler.spacing!r}); the shared solver "
                              f"'euler' is DDIM on any grid")

    def _check_variance(self, variance: str) -> None:
        """ConfigError for sigma_t^2 'learned' on a network without the variance output."""
        if variance == "learned" and not self.learn_sigma:
            raise ConfigError("sampling.variance='learned' needs a network with the variance "
                              "output (model.learn_sigma=True, DiT)")

    def _ancestral(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """Ancestral sampling (Alg. 2) with sigma_t^2 = `variance`, `clip_x0`, over
        `num_steps` (respaced when < T, on the timesteps of `spacing`: 'uniform', or 'adm' as
        DiT)."""
        self.check_sampler(sampler)
        x = ddpm_samplers.ancestral_sample(
            self.eps_fn(params, cond, sampler.guidance,
                        with_variance=sampler.variance == "learned"),
            self.schedule, rng, x_init.shape, variance=sampler.variance,
            clip_x0=sampler.clip_x0, num_steps=sampler.num_steps, x_init=x_init,
            spacing=sampler.spacing)
        return x, {"nfe": jnp.float32(sampler.num_steps)}

    def _ddim(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """DDIM (Song et al. 2021a, Eq. 12) with `eta` over `num_steps` timesteps of `spacing`."""
        self.check_sampler(sampler)
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
        self.check_sampler(sampler)
        ddim = sampler.method == "ddim"
        taus = ddpm_samplers.ddim_timesteps(
            self.schedule.num_timesteps, sampler.num_steps,
            ddpm_samplers.ddim_spacing(sampler.spacing) if ddim else "uniform")
        sigmas = denoisers.grid_with_zero(denoisers.discrete_sigmas(self.schedule)[taus[::-1]])
        solver = sampler.replace(method="euler_ancestral", eta=sampler.eta if ddim else 1.0)
        model = self.denoiser_model(params, cond, aux, sampler)
        return editing.edit(solvers.grid_sampler(solver), sigmas, model.denoiser, rng, x, mask,
                            cond, task=task, strength=strength)
