"""Score-based generative modelling through SDEs (Song et al. 2021): a score network trained by
continuous-time denoising score matching, sampled by predictor-corrector or the
probability-flow ODE, with exact likelihoods.

The score comes from the network output as in the paper's released code (`get_score_fn`):
VP and sub-VP nets see the noise conditioning 999 t and predict -sigma(t) * score, so
score = -F(x, 999 t) / sigma(t); VE nets see sigma(t) and their output is the score itself (the
NCSN++ configs divide by sigma inside the net, `scale_by_sigma`). The same score also gives the
denoiser D(x, sigma) of Karras et al. 2022 by Tweedie's formula, so the EDM and DPM-Solver
samplers run on it and consistency distillation can use it as a teacher.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, guidance
from diffusion_jax.errors import ConfigError
from diffusion_jax.likelihood import dequantized_bpd
from diffusion_jax.losses.dsm import dsm_loss
from diffusion_jax.methods.edm import (FAST_SAMPLERS, edit_with_sampler, fast_sample,
                                       fast_sample_nfe, grid_sampler, keyword_defaults,
                                       sampler_sigmas)
from diffusion_jax.methods.network import apply_network, init_network
from diffusion_jax.processes.sde import SDE, VESDE, expand
from diffusion_jax.samplers import pc, pc_inverse
from diffusion_jax.samplers.ode import ode_sample

SAMPLERS = ("pc", "ode") + FAST_SAMPLERS
EDIT_TASKS = ("inpaint", "sdedit", "colorize")


@dataclasses.dataclass(frozen=True)
class ScoreSDE:
    """A score network on a forward SDE (`processes.sde`), with the training options of the
    paper's continuous configs: t ~ U(train_eps, T), optional likelihood weighting g^2 and its
    importance sampling of t, and the squared error reduced by mean (VP, sub-VP) or sum (VE)."""

    model: Any  # flax module, apply(params, x, noise_conditioning, cond, train)
    sde: SDE
    image_shape: tuple
    num_classes: int = 0
    label_dropout: float = 0.0
    num_levels: int = 256  # pixel levels of the data, for dequantised bits/dim
    train_eps: float = 1e-5
    likelihood_weighting: bool = False
    importance_weighting: bool = False
    reduce: str = "mean"
    caption_length: int = 0  # > 0: conditioned on (B, caption_length) caption tokens

    def init_params(self, rng: jax.Array):
        return init_network(self.model, rng, self.image_shape,
                            self.sde.noise_conditioning(jnp.full((1,), 0.5)), self.num_classes,
                            self.caption_length)

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None):
        """The raw network F(x, t[, cond]), t its noise conditioning (999 t VP, sigma(t) VE)."""
        return apply_network(self.model, params, x, t, cond, train=train, rng=rng)

    def score_fn(self, params, cond=None, *, train: bool = False, rng=None, **guidance_options):
        """s(x, t) = grad_x log p_t(x) from the network (see the module docstring) with the
        condition `cond`; with the guidance options of `sample`, s_u + w (s_c - s_u)
        (`guidance.guide`, the interval in the EDM sigma(t) / alpha(t) of time t)."""
        def score(x, t, c=None):
            out = self.apply(params, x, self.sde.noise_conditioning(t), c, train=train, rng=rng)
            if isinstance(self.sde, VESDE):
                return out
            return -out / expand(self.sde.sigma(t), out)
        score = guidance.guide(score, cond, self.num_classes, self.caption_length,
                               sigma_of=self.sde.edm_sigma, **guidance_options)
        return lambda x, t: denoisers.call(score, x, t, cond)

    def conditional_denoiser(self, params):
        """D(x, sigma[, cond]) = E[x0 | x0 + sigma n = x] by Tweedie's formula on the score at
        the time t with sigma(t) / alpha(t) = sigma (`denoisers.from_vp_score`; VE: alpha = 1)."""
        score = lambda x, t, cond=None: self.score_fn(params, cond)(x, t)  # noqa: E731
        return denoisers.from_vp_score(score, self.sde.t_of_edm_sigma, self.sde.alpha)

    def denoiser(self, params, cond=None, **guidance_options):
        """D(x, sigma) with the condition `cond` fixed (None: unconditional / null label), by
        Tweedie's formula on `score_fn` (guided as it says)."""
        return denoisers.from_vp_score(self.score_fn(params, cond, **guidance_options),
                                       self.sde.t_of_edm_sigma, self.sde.alpha)

    def loss(self, params, batch: dict, rng: jax.Array):
        """Continuous-time denoising score matching (Eq. 7, `losses.dsm.dsm_loss`)."""
        loss_rng, dropout_rng, label_rng = jax.random.split(rng, 3)
        cond = None
        if self.num_classes or self.caption_length:
            cond = guidance.drop_labels(label_rng, batch["label"], self.label_dropout,
                                        guidance.null_condition(self.num_classes,
                                                                self.caption_length))
        score = self.score_fn(params, cond, train=True, rng=dropout_rng)
        loss = dsm_loss(score, self.sde, batch["image"], loss_rng, eps=self.train_eps,
                        likelihood_weighting=self.likelihood_weighting,
                        importance_weighting=self.importance_weighting, reduce=self.reduce)
        return loss, {}

    def sample(self, params, rng, x_init, cond=None, *, method: str = "pc",
               num_steps: int = 1000, eps: float = 1e-3, predictor: str = "euler_maruyama",
               corrector: str = "none", snr: float = 0.16, n_corrector_steps: int = 1,
               denoise: bool = True, ode_solver: str = "tsit5", rtol: float = 1e-5,
               atol: float = 1e-5, sigma_min: float = 0.0, sigma_max: float = 0.0,
               rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = 1e9,
               S_noise: float = 1.0, eta: float = 1.0, order: int = 3,
               spacing: str = "logsnr", guidance_scale: float = 1.0,
               guidance_sigma_lo: float = 0.0, guidance_sigma_hi: float = math.inf,
               negative_label: int = -1, negative_prompt: str = ""):
        """(images, {"nfe": network evaluations}) from standard-normal `x_init`.

        'pc': predictor-corrector over `num_steps` times from T to `eps` (Algorithm 1-3 of the
        paper; predictor euler_maruyama | reverse_diffusion | ancestral | none, corrector
        langevin | annealed_langevin | none with signal-to-noise ratio `snr`; `denoise` returns
        the noise-free mean of the last step). 'ode': the probability-flow ODE from T to `eps`
        with `ode_solver` (tsit5 | dopri5 adaptive with rtol / atol; euler | heun | rk4 with
        `num_steps` fixed steps). Every other method is an EDM / DPM-Solver / DDIM sampler
        (`methods.edm.fast_sample`) on `denoiser` between sigma_min and sigma_max, which default
        (0) to the SDE's own range sigma(eps) / alpha(eps) .. sigma(T) / alpha(T).
        guidance_scale w != 1: classifier-free guidance s_u + w (s_c - s_u) for every sampler,
        with the options of `methods.edm.EDM.sample` (`score_fn`).
        """
        guiding = dict(guidance_scale=guidance_scale, guidance_sigma_lo=guidance_sigma_lo,
                       guidance_sigma_hi=guidance_sigma_hi, negative_label=negative_label,
                       negative_prompt=negative_prompt)
        prior = self.sde.prior_std * x_init
        score = self.score_fn(params, cond, **guiding)
        if method == "pc":
            x, nfe = pc.pc_sample(score, self.sde, rng, x_init.shape, predictor=predictor,
                                  corrector=corrector, snr=snr,
                                  n_corrector_steps=n_corrector_steps, num_steps=num_steps,
                                  eps=eps, denoise=denoise, x_init=prior)
        elif method == "ode":
            x, nfe = ode_sample(score, self.sde, rng, x_init.shape, eps=eps, x_init=prior,
                                **_ode_options(ode_solver, rtol, atol, num_steps))
        else:
            lo, hi = self.sigma_range(eps)
            x = fast_sample(self.denoiser(params, cond, **guiding), rng, x_init, method=method,
                            num_steps=num_steps, sigma_min=sigma_min or lo,
                            sigma_max=sigma_max or hi, rho=rho, S_churn=S_churn, S_min=S_min,
                            S_max=S_max, S_noise=S_noise, eta=eta, order=order,
                            spacing=spacing)
            nfe = fast_sample_nfe(method, num_steps, order)
        return x, {"nfe": jnp.asarray(nfe, jnp.float32)}

    def sigma_range(self, eps: float) -> tuple[float, float]:
        """(sigma(eps) / alpha(eps), sigma(T) / alpha(T)): the SDE's noise levels as EDM sigmas."""
        with jax.ensure_compile_time_eval():  # Python floats even when called under jit
            levels = self.sde.edm_sigma(jnp.array([eps, self.sde.T]))
            return float(levels[0]), float(levels[1])

    def edit(self, params, rng, x, mask, cond=None, *, task: str, strength: float = 1.0,
             **options):
        """Image editing (the protocol's `edit`) with the sampler `sample` runs for `options`.

        PC (App. I of the paper): 'inpaint' keeps the pixels where `mask` is True and draws the
        rest by PC sampling with replacement (`pc_inverse.pc_inpaint`); 'colorize' returns RGB
        images whose channel mean is the grey level of x (`pc_inverse.pc_colorize`); 'sdedit'
        (Meng et al. 2022) noises x to time t0 = eps + strength (T - eps) (the last
        round(strength * num_steps) steps of the grid) and runs PC back to eps. 'ode': 'sdedit'
        along the probability-flow ODE from t0. The fast samplers inpaint and SDEdit through
        the denoiser (`methods.edm.edit_with_sampler`). Strength 0 returns x.
        """
        o = {**keyword_defaults(self.sample), **options}
        method, num_steps, eps = o["method"], o["num_steps"], o["eps"]
        guiding = {k: o[k] for k in guidance.OPTIONS}
        tasks = EDIT_TASKS if method == "pc" else ("sdedit",) if method == "ode" else (
            "inpaint", "sdedit")
        if task not in tasks:
            raise ConfigError(f"edit task {task!r} is not available with sampler {method!r} of "
                              f"score_sde; valid: {', '.join(tasks)}")
        if method in FAST_SAMPLERS:
            lo, hi = self.sigma_range(eps)
            sigmas = sampler_sigmas(method, num_steps, o["sigma_min"] or lo, o["sigma_max"] or hi,
                                    o["rho"], o["spacing"])
            sample_fn = grid_sampler(method, S_churn=o["S_churn"], S_min=o["S_min"],
                                     S_max=o["S_max"], S_noise=o["S_noise"], eta=o["eta"],
                                     order=o["order"])
            return edit_with_sampler(sample_fn, sigmas, self.denoiser(params, cond, **guiding),
                                     rng, x, mask, task=task, strength=strength)
        score = self.score_fn(params, cond, **guiding)
        pc_options = {k: o[k] for k in ("predictor", "corrector", "snr", "n_corrector_steps",
                                        "num_steps", "eps", "denoise")}
        if task == "inpaint":
            return pc_inverse.pc_inpaint(score, self.sde, rng, x, mask > 0.5, **pc_options)[0]
        if task == "colorize":
            if x.shape[-1] != 3:
                raise ConfigError(f"colorize needs RGB images, got {x.shape[-1]} channel(s)")
            gray = jnp.mean(x, axis=-1, keepdims=True)
            return pc_inverse.pc_colorize(score, self.sde, rng, gray, **pc_options)[0]
        if strength == 0:
            return x
        if method == "pc":
            start = num_steps - round(strength * num_steps)
            if start == num_steps:
                return x
            t0 = eps + (self.sde.T - eps) * (num_steps - 1 - start) / max(num_steps - 1, 1)
        else:
            start, t0 = 0, eps + strength * (self.sde.T - eps)
        noise_rng, sample_rng = jax.random.split(rng)
        mean, std = self.sde.marginal_prob(x, jnp.full(x.shape[:1], t0, x.dtype))
        x_t0 = mean + expand(std, x) * jax.random.normal(noise_rng, x.shape, x.dtype)
        if method == "pc":
            return pc.pc_sample(score, self.sde, sample_rng, x.shape, x_init=x_t0,
                                start_step=start, **pc_options)[0]
        return ode_sample(score, self.sde, sample_rng, x.shape, eps=eps, x_init=x_t0, t_start=t0,
                          **_ode_options(o["ode_solver"], o["rtol"], o["atol"], num_steps))[0]

    def bits_per_dim(self, params, rng, x, cond=None, *, divergence: str = "rademacher",
                     eps: float = 1e-5, ode_solver: str = "tsit5", rtol: float = 1e-5,
                     atol: float = 1e-5, num_steps: int = 1000):
        """(bits/dim (B,), NFE) of quantised images x in [-1, 1]: uniform dequantisation, then the
        probability-flow ODE log-likelihood from eps to T with the Hutchinson-Skilling trace
        estimator (`divergence` rademacher | gaussian | exact; Sec. 4.3 and App. D.2)."""
        return dequantized_bpd(self.score_fn(params, cond), self.sde, x, rng,
                               num_levels=self.num_levels, divergence=divergence, eps=eps,
                               **_ode_options(ode_solver, rtol, atol, num_steps))


def _ode_options(solver: str, rtol: float, atol: float, num_steps: int) -> dict:
    """`ode_solve` options: tolerances for the adaptive solvers, a step count for fixed ones."""
    from diffusion_jax.samplers.ode import ADAPTIVE, FIXED_STAGES

    if solver in ADAPTIVE:
        return dict(method=solver, rtol=rtol, atol=atol)
    if solver in FIXED_STAGES:
        return dict(method=solver, num_steps=num_steps)
    raise ValueError(f"unknown ODE solver {solver!r}; valid: "
                     f"{', '.join(sorted({**ADAPTIVE, **FIXED_STAGES}))}")
