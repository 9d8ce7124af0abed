"""sCM: continuous-time consistency models in TrigFlow (Lu & Song 2024, "Simplifying,
Stabilizing and Scaling Continuous-Time Consistency Models").

f(x_t, t) = cos t x_t - sin t sigma_d F(x_t / sigma_d, c_noise(t)) (`processes.trigflow`), trained
with the continuous objective of `losses.scm` (tangent g = cos t df-/dt by `jax.jvp` through the
network, tangent warm-up, tangent normalisation, adaptive weighting u(t)):
- 'sct' (consistency training): dx_t/dt = cos t z - sin t x0 from the data;
- 'scd' (distillation): dx_t/dt = the PF-ODE velocity of a teacher, any trained method with a
  denoiser D(x, sigma) (an EDM run, a score SDE, DDPM) converted to TrigFlow,
  v = (cos t x_t - D(x_t / cos t, sigma_d tan t)) / sin t. The teacher's run is a
  `requirements()` RunWeights restored by the launcher; with `init_from_teacher` the student
  starts from the teacher's weights, exactly the teacher's TrigFlow F when c_noise = 'edm'.

c_noise: 't' (c_noise = t, the paper's choice for its own networks, Sec. 4.1; the scale is
unverified) or 'edm' (F = -F_edm(x_t / sigma_d, ln(sigma_d tan t) / 4): an EDM-preconditioned
network is a TrigFlow one, so an EDM teacher's weights are a TrigFlow model as they stand).
t ~ arctan(e^tau / sigma_d), tau ~ N(P_mean, P_std^2). Sampling: 'onestep' from
t_max = arctan(80 / sigma_d), 'multistep' over explicit `sampling.sigmas` (EDM sigmas, t =
arctan(sigma / sigma_d)) or, for two steps, t_max then t_mid = 1.1 (the paper's two-step
midpoint as sCM-mnist uses it; unverified against the paper). The chains run
`samplers.consistency` on f in the EDM convention (`trigflow.edm_convention`), so the first
state is sigma_max z, which in TrigFlow is sin(t_max) sigma_d z (sin t_max = 1 - 2e-5), not the
paper's sigma_d z.

Differences from the paper: no adaptive double normalisation or the paper's EDM2 variant (the
networks are this codebase's); the adaptive weight u(t) is its own small head
(`models.logvar`) on t; no classifier-free-guided teacher.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import scm as objectives
from diffusion_jax.methods.base import RunWeights
from diffusion_jax.methods.network import NetworkMethod, train_condition
from diffusion_jax.models.logvar import LogVariance
from diffusion_jax.processes import trigflow
from diffusion_jax.samplers import consistency as sampler_lib
from diffusion_jax.samplers import editing
from diffusion_jax.samplers.sampler import Sampler

TRAINING_MODES = ("sct", "scd")
C_NOISE = ("t", "edm")
T_MID = 1.1  # the two-step sampler's intermediate time


@dataclasses.dataclass(frozen=True)
class SCM(NetworkMethod):
    """A TrigFlow consistency model on backbone `model` (apply(params, x, c_noise, cond, train));
    parameters {"net": the backbone's, "logvar": u(t)'s (with `adaptive_weighting`)}."""

    model: Any
    image_shape: tuple
    num_classes: int = 0
    label_dropout: float = 0.0
    caption_length: int = 0
    training_mode: str = "sct"
    sigma_d: float = trigflow.SIGMA_D
    c_noise: str = "t"
    P_mean: float = -1.0
    P_std: float = 1.4
    tangent_warmup_steps: int = 10_000
    tangent_c: float = objectives.TANGENT_C
    adaptive_weighting: bool = True
    sigma_max: float = 80.0  # t_max = arctan(sigma_max / sigma_d)
    teacher: Any = None  # sCD: the teacher method (a Method with a denoiser)
    teacher_workdir: str = ""
    init_from_teacher: bool = False

    default_sampler: ClassVar[Sampler] = Sampler(method="onestep", num_steps=1)

    # --- network and consistency function -------------------------------------------------
    def init_params(self, rng):
        net_rng, logvar_rng = jax.random.split(rng)
        params = {"net": super().init_params(net_rng)}
        if self.adaptive_weighting:
            params["logvar"] = LogVariance().init(logvar_rng, jnp.zeros((1,)))["params"]
        return params

    def apply(self, params, x, t, cond=None, *, train: bool = False, rng=None):
        """The raw backbone on noise conditioning t (c_noise)."""
        return super().apply(params["net"], x, t, cond, train=train, rng=rng)

    def F(self, params, *, train: bool = False, rng=None):
        """F(x_t / sigma_d, t[, cond]): the backbone on c_noise(t); 'edm': -F_edm."""
        if self.c_noise == "edm":
            return lambda y, t, cond=None: -self.apply(
                params, y, jnp.log(trigflow.sigma_of_t(t, self.sigma_d)) / 4.0, cond,
                train=train, rng=rng)
        return lambda y, t, cond=None: self.apply(params, y, t, cond, train=train, rng=rng)

    def consistency_fn(self, params):
        """f(x_t, t[, cond]) = cos t x_t - sin t sigma_d F(x_t / sigma_d, t) (Eq. 6)."""
        return trigflow.consistency_function(self.F(params), self.sigma_d)

    def logvar(self, params, t):
        """u(t), 0 without adaptive weighting."""
        if not self.adaptive_weighting:
            return jnp.zeros_like(t)
        return LogVariance().apply({"params": params["logvar"]}, t)

    # --- aux state ----------------------------------------------------------------------
    def requirements(self) -> dict:
        """sCD: the teacher run's EMA weights."""
        return {"teacher": RunWeights(self.teacher_workdir)} if self.training_mode == "scd" else {}

    def init_aux(self, params, rng):
        if self.training_mode != "scd":
            return {}
        if self.teacher is None:
            raise ConfigError("scm.training_mode=scd needs scm.teacher_workdir: the work "
                              "directory of a trained teacher (edm, score_sde or ddpm)")
        shapes = jax.eval_shape(self.teacher.init_params, rng)
        return {"teacher": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)}

    def start(self, params, aux, resources):
        """The restored teacher into aux; with `init_from_teacher` the student's network starts
        from the teacher's weights."""
        aux = {**aux, **resources}
        if self.init_from_teacher:
            shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
            if shapes(aux["teacher"]) != shapes(params["net"]):
                raise ConfigError("scm.init_from_teacher: the teacher's network does not match "
                                  "this config's (different architecture); check model.*")
            params = {**params, "net": jax.tree.map(jnp.copy, aux["teacher"])}
        return params, aux

    # --- training -----------------------------------------------------------------------
    def tangent(self, aux, x0, z, t, x_t, cond):
        """dx_t/dt: cos t z - sin t x0 (sCT), or the teacher's PF-ODE velocity (sCD)."""
        if self.training_mode == "sct":
            return trigflow.velocity(x0, z, t)
        teacher = trigflow.velocity_of_edm_denoiser(
            self.teacher.conditional_denoiser(aux["teacher"]), self.sigma_d)
        return jax.lax.stop_gradient(teacher(x_t, t, cond))

    def loss(self, params, batch: dict, rng: jax.Array, aux, step):
        """Batch mean of e^{-u} / D ||F_theta - F- - g / (||g|| + c)||^2 + u (`losses.scm`).
        Metrics: the tangent warm-up r, the mean ||g|| before normalisation, the mean u."""
        t_rng, z_rng, dropout_rng, label_rng = jax.random.split(rng, 4)
        x0 = batch["image"]
        cond = train_condition(self, batch, label_rng)
        t = trigflow.sample_t(t_rng, x0.shape[0], self.P_mean, self.P_std, self.sigma_d)
        z = self.sigma_d * jax.random.normal(z_rng, x0.shape)
        x_t = trigflow.noisy(x0, z, t)
        dxt_dt = self.tangent(aux, x0, z, t, x_t, cond)
        F = self.F(params, train=True, rng=dropout_rng)
        r = objectives.tangent_warmup(step, self.tangent_warmup_steps)
        F_theta, g = objectives.network_and_tangent(lambda y, s: F(y, s, cond), x_t, t, dxt_dt,
                                                    r, self.sigma_d)
        g_norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))
        logvar = self.logvar(params, t)
        per_example = objectives.scm_loss(F_theta, objectives.normalize_tangent(g, self.tangent_c),
                                          logvar)
        return jnp.mean(per_example), {"tangent_warmup": r, "tangent_norm": jnp.mean(g_norm),
                                       "logvar": jnp.mean(logvar)}

    # --- sampling and editing -----------------------------------------------------------
    def chains(self) -> dict:
        return {"onestep": (self._sample, self._edit), "multistep": (self._sample, self._edit)}

    def times(self, sampler: Sampler) -> tuple:
        """The sampling times t_1 > ... > t_k: 'onestep' (t_max); 'multistep': arctan of the
        explicit `sigmas` / sigma_d, or (t_max, 1.1) for two steps."""
        t_max = float(np.arctan(self.sigma_max / self.sigma_d))
        if sampler.method == "onestep":
            return (t_max,)
        if len(sampler.sigmas):
            sigmas = tuple(float(s) for s in sampler.sigmas)
            if np.any(np.diff(sigmas) >= 0) or min(sigmas) <= 0 or max(sigmas) > self.sigma_max:
                raise ConfigError(f"scm multistep sampling.sigmas must decrease within (0, "
                                  f"{self.sigma_max}]; got {list(sigmas)}")
            return tuple(float(np.arctan(s / self.sigma_d)) for s in sigmas)
        if sampler.num_steps == 1:
            return (t_max,)
        if sampler.num_steps == 2:
            return (t_max, T_MID)
        raise ConfigError(f"scm multistep sampling with {sampler.num_steps} steps needs "
                          f"sampling.sigmas (the EDM noise levels of its steps)")

    def check_sampler(self, sampler: Sampler) -> None:
        if sampler.method in self.chains():
            self.times(sampler)

    def _grid(self, sampler: Sampler):
        """The times as EDM sigmas, then 0 (`samplers.consistency`' grid)."""
        sigmas = [self.sigma_d * np.tan(t) for t in self.times(sampler)]
        return jnp.asarray(sigmas + [0.0], jnp.float32)

    def _sample(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """f at t_max on noise, then (multistep) re-noise to each next t and apply f again."""
        grid = self._grid(sampler)
        f = trigflow.edm_convention(self.consistency_fn(params), self.sigma_d)
        images = sampler_lib.consistency_sample(f, rng, x_init.shape, sigmas=grid, sigma_min=0.0,
                                                x_init=grid[0] * x_init, cond=cond)
        return images, {"nfe": jnp.float32(grid.shape[0] - 1)}

    def _edit(self, params, rng, x, mask, cond, aux, sampler: Sampler, task, strength):
        """Inpainting, colourisation or SDEdit through the same chain (`samplers.editing`)."""
        sample_fn = functools.partial(sampler_lib.consistency_sample, sigma_min=0.0)
        f = trigflow.edm_convention(self.consistency_fn(params), self.sigma_d)
        return editing.edit(sample_fn, self._grid(sampler), f, rng, x, mask, cond, task=task,
                            strength=strength)
