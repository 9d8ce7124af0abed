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
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, guidance
from diffusion_jax.errors import ConfigError
from diffusion_jax.likelihood import dequantized_bpd
from diffusion_jax.losses.dsm import dsm_loss
from diffusion_jax.methods.network import NetworkMethod, train_condition
from diffusion_jax.processes.sde import SDE, VESDE, expand
from diffusion_jax.samplers import editing, pc, solvers
from diffusion_jax.samplers.ode import ADAPTIVE, FIXED_STAGES, ode_sample
from diffusion_jax.samplers.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class ScoreSDE(NetworkMethod):
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

    has_denoiser: ClassVar[bool] = True
    default_sampler: ClassVar[Sampler] = Sampler(method="pc", num_steps=1000)
    has_likelihood: ClassVar[bool] = True

    def example_noise_input(self) -> jax.Array:
        return self.sde.noise_conditioning(jnp.full((1,), 0.5))

    def conditional_score(self, params, guide: guidance.Guidance = guidance.Guidance(), cond=None,
                          *, train: bool = False, rng=None):
        """s(x, t[, cond]) = grad_x log p_t(x) from the network (see the module docstring); with
        `guide`, s_u + w (s_c - s_u) (`guidance.guide`, the interval in the EDM sigma(t) / alpha(t)
        of time t; `cond` is the condition the sampler will pass)."""
        def score(x, t, c=None):
            out = self.apply(params, x, self.sde.noise_conditioning(t), c, train=train, rng=rng)
            if isinstance(self.sde, VESDE):
                return out
            return -out / expand(self.sde.sigma(t), out)
        return guidance.guide(score, cond, self.num_classes, self.caption_length, guide,
                              sigma_of=self.sde.edm_sigma)

    def score_fn(self, params, cond=None, guide: guidance.Guidance = guidance.Guidance(), *,
                 train: bool = False, rng=None):
        """s(x, t) with the condition `cond` fixed (None: unconditional / null label)."""
        score = self.conditional_score(params, guide, cond, train=train, rng=rng)
        return lambda x, t: denoisers.call(score, x, t, cond)

    def denoiser_model(self, params, cond, aux, sampler: Sampler) -> solvers.DenoiserModel:
        """D(x, sigma[, cond]) = E[x0 | x0 + sigma n = x] by Tweedie's formula on the (guided) score
        at the time t with sigma(t) / alpha(t) = sigma (`denoisers.from_score`; VE: alpha = 1),
        over the SDE's range sigma(eps) / alpha(eps) .. sigma(T) / alpha(T)."""
        D = denoisers.from_score(self.conditional_score(params, sampler.guidance, cond),
                                    self.sde.t_of_edm_sigma, self.sde.alpha)
        return solvers.DenoiserModel(D, *self.sigma_range(sampler.eps))

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        """Continuous-time denoising score matching (Eq. 7, `losses.dsm.dsm_loss`)."""
        loss_rng, dropout_rng, label_rng = jax.random.split(rng, 3)
        cond = train_condition(self, batch, label_rng)
        score = self.score_fn(params, cond, train=True, rng=dropout_rng)
        loss = dsm_loss(score, self.sde, batch["image"], loss_rng, eps=self.train_eps,
                        likelihood_weighting=self.likelihood_weighting,
                        importance_weighting=self.importance_weighting, reduce=self.reduce)
        return loss, {}

    def sigma_range(self, eps: float) -> tuple[float, float]:
        """(sigma(eps) / alpha(eps), sigma(T) / alpha(T)): the SDE's noise levels as EDM sigmas."""
        with jax.ensure_compile_time_eval():  # Python floats even when called under jit
            levels = self.sde.edm_sigma(jnp.array([eps, self.sde.T]))
            return float(levels[0]), float(levels[1])

    # --- the chains: predictor-corrector and the probability-flow ODE ----------------------
    def chains(self) -> dict:
        return {"pc": (self._pc, self._edit_pc), "ode": (self._ode, self._edit_ode)}

    def _pc(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """Predictor-corrector over `num_steps` times from T to `eps` (Algorithms 1-3 of the
        paper; `denoise` returns the noise-free mean of the last step)."""
        x, nfe = pc.pc_sample(self.score_fn(params, cond, sampler.guidance), self.sde, rng,
                              x_init.shape, x_init=self.sde.prior_std * x_init,
                              **_pc_options(sampler))
        return x, {"nfe": jnp.asarray(nfe, jnp.float32)}

    def _ode(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """The probability-flow ODE from T to `eps` with `ode_solver` (tsit5 | dopri5 adaptive
        with rtol / atol; euler | heun | rk4 with `num_steps` fixed steps)."""
        x, nfe = ode_sample(self.score_fn(params, cond, sampler.guidance), self.sde, rng,
                            x_init.shape, eps=sampler.eps, x_init=self.sde.prior_std * x_init,
                            **_ode_options(sampler))
        return x, {"nfe": jnp.asarray(nfe, jnp.float32)}

    def _edit_pc(self, params, rng, x, mask, cond, aux, sampler: Sampler, task, strength):
        """PC editing (App. I of the paper): 'inpaint' and 'colorize' by replacement
        (`pc.pc_replace`), 'sdedit' (Meng et al. 2022) from x noised to the time of the first of
        the last round(strength * num_steps) steps of the grid, run back to eps."""
        score, options = self.score_fn(params, cond, sampler.guidance), _pc_options(sampler)
        if task == "inpaint":
            return pc.pc_replace(score, self.sde, rng, x, mask > 0.5, **options)[0]
        if task == "colorize":
            return pc.pc_replace(score, self.sde, rng, editing.grey_to_rgb(x), editing.COLOR_MASK,
                                 editing.COLOR_BASIS, **options)[0]
        _check_task(task, "pc")
        n = sampler.num_steps
        start = editing.start_step(n, strength)
        if start == n:
            return x
        t0 = sampler.eps + (self.sde.T - sampler.eps) * (n - 1 - start) / max(n - 1, 1)
        noise_rng, sample_rng = jax.random.split(rng)
        return pc.pc_sample(score, self.sde, sample_rng, x.shape,
                            x_init=self._noised(noise_rng, x, t0), start_step=start, **options)[0]

    def _edit_ode(self, params, rng, x, mask, cond, aux, sampler: Sampler, task, strength):
        """SDEdit along the probability-flow ODE from x noised to t0 = eps + strength (T - eps)."""
        if task != "sdedit":
            raise ConfigError(f"edit task {task!r} is not available with sampler 'ode' of "
                              f"score_sde; valid: sdedit")
        if strength == 0:
            return x
        t0 = sampler.eps + strength * (self.sde.T - sampler.eps)
        noise_rng, sample_rng = jax.random.split(rng)
        return ode_sample(self.score_fn(params, cond, sampler.guidance), self.sde, sample_rng,
                          x.shape, eps=sampler.eps, x_init=self._noised(noise_rng, x, t0),
                          t_start=t0, **_ode_options(sampler))[0]

    def _noised(self, rng, x, t):
        """x_t ~ p_0t(x_t | x) at the time t."""
        mean, std = self.sde.marginal_prob(x, jnp.full(x.shape[:1], t, x.dtype))
        return mean + expand(std, x) * jax.random.normal(rng, x.shape, x.dtype)

    def bits_per_dim(self, params, rng, x, cond=None, *, divergence: str = "rademacher",
                     eps: float = 1e-5, ode_solver: str = "tsit5", rtol: float = 1e-5,
                     atol: float = 1e-5, num_steps: int = 1000):
        """(bits/dim (B,), NFE) of quantised images x in [-1, 1]: uniform dequantisation, then the
        probability-flow ODE log-likelihood from eps to T with the Hutchinson-Skilling trace
        estimator (`divergence` rademacher | gaussian | exact; Sec. 4.3 and App. D.2)."""
        return dequantized_bpd(self.score_fn(params, cond), self.sde, x, rng,
                               num_levels=self.num_levels, divergence=divergence, eps=eps,
                               **_ode_options(Sampler(ode_solver=ode_solver, rtol=rtol, atol=atol,
                                                      num_steps=num_steps)))


def _check_task(task: str, method: str) -> None:
    if task not in editing.TASKS:
        raise ConfigError(f"edit task {task!r} is not available with sampler {method!r} of "
                          f"score_sde; valid: {', '.join(editing.TASKS)}")


def _pc_options(sampler: Sampler) -> dict:
    """`pc.pc_sample` options of the sampler."""
    return dict(predictor=sampler.predictor, corrector=sampler.corrector, snr=sampler.snr,
                n_corrector_steps=sampler.n_corrector_steps, num_steps=sampler.num_steps,
                eps=sampler.eps, denoise=sampler.denoise)


def _ode_options(sampler: Sampler) -> dict:
    """`ode_solve` options: tolerances for the adaptive solvers, a step count for fixed ones."""
    if sampler.ode_solver in ADAPTIVE:
        return dict(method=sampler.ode_solver, rtol=sampler.rtol, atol=sampler.atol)
    if sampler.ode_solver in FIXED_STAGES:
        return dict(method=sampler.ode_solver, num_steps=sampler.num_steps)
    raise ConfigError(f"unknown ODE solver {sampler.ode_solver!r}; valid: "
                      f"{', '.join(sorted({**ADAPTIVE, **FIXED_STAGES}))}")
