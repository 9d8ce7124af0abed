"""Consistency models (Song et al. 2023; improved CT: Song & Dhariwal 2023).

f_theta(x, sigma) = c_skip(sigma) x + c_out(sigma) F_theta(c_in(sigma) x, c_noise(sigma)) with the
boundary parameterisation of `preconditioning.ConsistencyPrecond`, so f(x, sigma_min) = x exactly
on any backbone. Three training modes (`losses.consistency.consistency_loss`):
- 'cd': distillation from a teacher trained by this codebase (any method with a denoiser:
  EDM, score SDE, DDPM), adjacent levels of an N-level Karras grid, one Heun or Euler teacher
  step; the target network is an EMA of the student with rate `target_ema` (0: the online
  weights under stop-gradient, the released CIFAR-10 setting); the student may start from the
  teacher's weights.
- 'ct': consistency training with the N(k) and mu(k) curricula of Song et al. 2023, App. C
  (mu0 = 0: no target EMA, the target is the online network under stop-gradient).
- 'ict': improved CT: no target EMA, the doubling curriculum for N, log-normal level sampling,
  the 1 / (sigma_{n+1} - sigma_n) weighting and (in the configs) the pseudo-Huber distance.

Aux state (the method protocol's `init_aux`): `teacher` (CD), `target` (the EMA target network,
when there is one) and `lpips` (the LPIPS network, when it is the distance), all checkpointed with
the train state, none trained. The teacher run and the LPIPS weights are `requirements()` that
the launcher layer restores.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import preconditioning
from diffusion_jax.denoisers import call
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import consistency as objectives, lpips
from diffusion_jax.methods.base import RunWeights, WeightsFile
from diffusion_jax.methods.network import NetworkMethod
from diffusion_jax.samplers import consistency as sampler_lib
from diffusion_jax.samplers import editing
from diffusion_jax.samplers.sampler import Sampler

TRAINING_MODES = ("cd", "ct", "ict")
SPREAD_SAMPLES = 32  # the fixed noise batch of the collapse guard (`onestep_spread`)


@dataclasses.dataclass(frozen=True)
class Consistency(NetworkMethod):
    """A consistency model on backbone `model` (apply(params, x, c_noise, cond, train))."""

    model: Any
    image_shape: tuple
    num_classes: int = 0
    training_mode: str = "cd"
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    distance: str = "l2"
    huber_c: float = 0.0  # 0: 0.00054 sqrt(d)
    weighting: str = "uniform"
    num_scales: int = 18  # CD's N
    teacher: Any = None  # CD: the teacher method (a Method with a denoiser)
    teacher_workdir: str = ""
    teacher_solver: str = "heun"
    target_ema: float = 0.0  # CD's mu
    init_from_teacher: bool = False
    total_steps: int = 800_000  # K of the CT / iCT curricula
    s0: int = 2
    s1: int = 150
    mu0: float = 0.9
    P_mean: float = -1.1
    P_std: float = 2.0
    lpips_weights: str = ""
    lpips_resize: int = 224  # images are resized bilinearly to this size before LPIPS
    caption_length: int = 0

    default_sampler: ClassVar[Sampler] = Sampler(method="onestep", num_steps=1)

    # --- network and consistency function -------------------------------------------------
    def consistency_fn(self, params, *, train: bool = False, rng=None):
        """f(x, sigma[, cond]) = c_skip x + c_out F(c_in x, c_noise[, cond])."""
        F = lambda x, c_noise, cond=None: self.apply(params, x, c_noise, cond, train=train,
                                                      rng=rng)
        return preconditioning.precondition(
            F, preconditioning.ConsistencyPrecond(self.sigma_data, self.sigma_min))

    # --- aux state ----------------------------------------------------------------------
    @property
    def has_target_ema(self) -> bool:
        return ((self.training_mode == "ct" and self.mu0 > 0)
                or (self.training_mode == "cd" and self.target_ema > 0))

    def requirements(self) -> dict:
        """CD: the teacher run's EMA weights; the LPIPS distance: its weights file."""
        needs = {}
        if self.training_mode == "cd":
            needs["teacher"] = RunWeights(self.teacher_workdir)
        if self.distance == "lpips":
            needs["lpips"] = WeightsFile("lpips", self.lpips_weights)
        return needs

    def init_aux(self, params, rng):
        """Shapes of the aux state; the teacher and LPIPS weights come from `start`."""
        zeros = lambda shapes: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        aux = {}
        if self.training_mode == "cd":
            if self.teacher is None:
                raise ConfigError("consistency.training_mode=cd needs consistency.teacher_workdir:"
                                  " the work directory of a trained teacher (edm, score_sde or "
                                  "ddpm)")
            aux["teacher"] = zeros(jax.eval_shape(self.teacher.init_params, rng))
        if self.has_target_ema:
            aux["target"] = jax.tree.map(jnp.copy, params)
        if self.distance == "lpips":
            if not self.lpips_weights:
                raise ConfigError("consistency.distance=lpips needs consistency.lpips_weights: "
                                  "the .npz made by tools/convert_lpips_weights.py")
            aux["lpips"] = zeros(lpips.abstract_lpips_params())
        return aux

    def start(self, params, aux, resources):
        """The restored teacher and LPIPS weights into aux; with `init_from_teacher` the student
        (and its target network) start from the teacher's weights."""
        aux = {**aux, **resources}
        if self.init_from_teacher:
            _check_same_tree("consistency.init_from_teacher: the teacher's network",
                             aux["teacher"], params)
            params = jax.tree.map(jnp.copy, aux["teacher"])
            if self.has_target_ema:
                aux["target"] = jax.tree.map(jnp.copy, params)
        return params, aux

    def update_aux(self, aux, params, step):
        """theta- <- mu theta- + (1 - mu) theta after each step: mu(k) of CT, `target_ema` of CD."""
        if not self.has_target_ema:
            return aux
        mu = (objectives.ct_target_decay(self.current_num_scales(step), self.s0, self.mu0)
              if self.training_mode == "ct" else self.target_ema)
        target = jax.tree.map(lambda t, p: mu * t + (1.0 - mu) * p, aux["target"], params)
        return {**aux, "target": target}

    # --- training -----------------------------------------------------------------------
    def current_num_scales(self, step):
        """N at training step k: fixed for CD, the CT / iCT curricula otherwise."""
        if self.training_mode == "ct":
            return objectives.ct_num_scales(step, self.total_steps, self.s0, self.s1)
        if self.training_mode == "ict":
            return objectives.ict_num_scales(step, self.total_steps, self.s0, self.s1)
        return jnp.asarray(self.num_scales, jnp.int32)

    def _sample_index(self, num_scales):
        if self.training_mode == "ict":
            logits = objectives.lognormal_index_logits(num_scales, self.s1 + 1, self.sigma_min,
                                                       self.sigma_max, self.rho, self.P_mean,
                                                       self.P_std)
            return lambda rng, n: jax.random.categorical(rng, logits, shape=(n,))
        return lambda rng, n: jax.random.randint(rng, (n,), 0, num_scales - 1)

    def _distance(self, aux):
        if self.distance == "lpips":
            return lpips.lpips_distance_fn(aux["lpips"], resize_to=self.lpips_resize)
        c = self.huber_c or objectives.default_huber_c(int(np.prod(self.image_shape)))
        return objectives.distance_fn(self.distance, c)

    def onestep_spread(self, params, batch: dict):
        """spread(f(sigma_max z, sigma_max)) / spread(data batch) on a fixed batch of
        `SPREAD_SAMPLES` noises z (labels: the batch's first ones): about 1 for a model that
        samples the data, near 0 once training has collapsed to a constant consistency
        function. Logged by `loss`, without gradients."""
        n = min(SPREAD_SAMPLES, batch["image"].shape[0])
        z = jax.random.normal(jax.random.PRNGKey(0), (n, *batch["image"].shape[1:]))
        cond = batch["label"][:n] if self.num_classes else None
        x = call(self.consistency_fn(jax.lax.stop_gradient(params)), self.sigma_max * z,
                 jnp.full((n,), self.sigma_max), cond)
        return objectives.spread(x) / objectives.spread(batch["image"])

    def loss(self, params, batch: dict, rng: jax.Array, aux, step):
        """Batch mean of the consistency loss; online and target share the dropout key (Song &
        Dhariwal 2023, Sec. 3.1). Metrics: N and `onestep_spread` (the collapse guard)."""
        dropout_rng, loss_rng = jax.random.split(rng)
        num_scales = self.current_num_scales(step)
        target_params = aux["target"] if self.has_target_ema else params
        teacher = (self.teacher.conditional_denoiser(aux["teacher"])
                   if self.training_mode == "cd" else None)
        per_example = objectives.consistency_loss(
            self.consistency_fn(params, train=True, rng=dropout_rng),
            self.consistency_fn(target_params, train=True, rng=dropout_rng),
            batch["image"], loss_rng, batch["label"] if self.num_classes else None,
            num_scales=num_scales, sample_index=self._sample_index(num_scales),
            distance=self._distance(aux), weighting=self.weighting, teacher=teacher,
            teacher_solver=self.teacher_solver, sigma_min=self.sigma_min,
            sigma_max=self.sigma_max, rho=self.rho)
        return jnp.mean(per_example), {"num_scales": num_scales,
                                       "onestep_spread": self.onestep_spread(params, batch)}

    # --- sampling and editing -----------------------------------------------------------
    def chains(self) -> dict:
        return {"onestep": (self._sample, self._edit), "multistep": (self._sample, self._edit)}

    def _grid(self, sampler: Sampler):
        """'onestep': (sigma_max, 0); 'multistep': `sigmas` (explicit, decreasing) or the first
        `num_steps` levels of the rho grid, then 0."""
        if sampler.method == "onestep":
            return sampler_lib.consistency_sigmas(1, self.sigma_min, self.sigma_max, self.rho)
        return sampler_lib.consistency_sigmas(sampler.num_steps, self.sigma_min, self.sigma_max,
                                              self.rho, tuple(sampler.sigmas))

    def _sample(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """One step f(sigma_max z, sigma_max), or multistep consistency sampling (Algorithm 1)."""
        grid = self._grid(sampler)
        images = sampler_lib.consistency_sample(self.consistency_fn(params), rng, x_init.shape,
                                                sigmas=grid, sigma_min=self.sigma_min,
                                                x_init=grid[0] * x_init, cond=cond)
        return images, {"nfe": jnp.float32(grid.shape[0] - 1)}

    def _edit(self, params, rng, x, mask, cond, aux, sampler: Sampler, task, strength):
        """Inpainting and colourisation (known part kept at every step) or SDEdit through
        multistep consistency sampling (Song et al. 2023, Sec. 6.3 and Algorithm 4)."""
        sample_fn = functools.partial(sampler_lib.consistency_sample, sigma_min=self.sigma_min)
        return editing.edit(sample_fn, self._grid(sampler), self.consistency_fn(params), rng, x,
                            mask, cond, task=task, strength=strength)


def _check_same_tree(what: str, source, expected) -> None:
    """ConfigError unless `source` has the structure and shapes of `expected`."""
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
    if jax.tree.structure(source) != jax.tree.structure(expected) or \
            shapes(source) != shapes(expected):
        raise ConfigError(f"{what} does not match the network of this config (different "
                          f"architecture); check the teacher's model.* keys")
