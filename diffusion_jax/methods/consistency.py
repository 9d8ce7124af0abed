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
the train state, none trained.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import preconditioning
from diffusion_jax.denoisers import call
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import consistency as objectives
from diffusion_jax.methods.edm import edit_with_sampler
from diffusion_jax.methods.network import apply_network, init_network
from diffusion_jax.samplers import consistency as sampler

TRAINING_MODES = ("cd", "ct", "ict")
SAMPLERS = ("onestep", "multistep")
SPREAD_SAMPLES = 32  # the fixed noise batch of the collapse guard (`onestep_spread`)


@dataclasses.dataclass(frozen=True)
class Consistency:
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
    teacher: Any = None  # CD: the teacher method (has conditional_denoiser)
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

    # --- network and consistency function -------------------------------------------------
    def init_params(self, rng: jax.Array):
        return init_network(self.model, rng, self.image_shape, jnp.zeros((1,)),
                            self.num_classes)

    def apply(self, params, x, c_noise, cond=None, *, train: bool = False, rng=None):
        """The raw backbone F(x_in, c_noise[, cond])."""
        return apply_network(self.model, params, x, c_noise, cond, train=train, rng=rng)

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

    def init_aux(self, params, rng):
        """Shapes of the aux state; the teacher and LPIPS weights are filled by `load_aux`."""
        zeros = lambda shapes: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        aux = {}
        if self.training_mode == "cd":
            if self.teacher is None:
                raise ConfigError("consistency.training_mode=cd needs training.teacher_checkpoint:"
                                  " the work directory of a trained teacher (edm, score_sde or "
                                  "ddpm)")
            aux["teacher"] = zeros(jax.eval_shape(self.teacher.init_params, rng))
        if self.has_target_ema:
            aux["target"] = jax.tree.map(jnp.copy, params)
        if self.distance == "lpips":
            from diffusion_jax.losses import lpips

            if not self.lpips_weights:
                raise ConfigError("consistency.distance=lpips needs consistency.lpips_weights: "
                                  "the .npz made by tools/convert_lpips_weights.py")
            aux["lpips"] = zeros(lpips.abstract_lpips_params())
        return aux

    def load_aux(self, aux):
        """Restore the teacher's EMA weights from `teacher_workdir` and the LPIPS weights."""
        aux = dict(aux)
        if self.training_mode == "cd":
            from diffusion_jax.training.loop import restore_run

            _, _, teacher_state = restore_run(self.teacher_workdir)
            _check_same_tree("the teacher checkpoint", teacher_state.ema_params, aux["teacher"])
            aux["teacher"] = teacher_state.ema_params
            if self.init_from_teacher and self.has_target_ema:
                aux["target"] = jax.tree.map(jnp.copy, teacher_state.ema_params)
        if self.distance == "lpips":
            from diffusion_jax.losses import lpips

            aux["lpips"] = lpips.load_lpips_params(self.lpips_weights)
        return aux

    def initial_params(self, params, aux):
        """The student starts from the teacher's weights with `init_from_teacher`."""
        if not self.init_from_teacher:
            return params
        _check_same_tree("training.init_from_teacher: the teacher's network", aux["teacher"],
                         params)
        return jax.tree.map(jnp.copy, aux["teacher"])

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
            from diffusion_jax.losses import lpips

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

    def loss(self, params, batch: dict, rng: jax.Array, *, aux, step):
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
    def _grid(self, method: str, num_steps: int, sigmas: Sequence[float]):
        if method not in SAMPLERS:
            raise ConfigError(f"unknown sampler {method!r} for consistency models; valid: "
                              f"{', '.join(SAMPLERS)}")
        if method == "onestep":
            return sampler.consistency_sigmas(1, self.sigma_min, self.sigma_max, self.rho)
        return sampler.consistency_sigmas(num_steps, self.sigma_min, self.sigma_max, self.rho,
                                          tuple(sigmas))

    def sample(self, params, rng, x_init, cond=None, *, aux, method: str = "onestep",
               num_steps: int = 1, sigmas: Sequence[float] = ()):
        """Images from standard-normal `x_init`: one step f(sigma_max z, sigma_max), or
        'multistep' over `sigmas` (explicit, decreasing) or the first `num_steps` levels of
        the rho grid (Algorithm 1). Returns (images, {"nfe": evaluations})."""
        grid = self._grid(method, num_steps, sigmas)
        images = sampler.consistency_sample(self.consistency_fn(params), rng, x_init.shape,
                                            sigmas=grid, sigma_min=self.sigma_min,
                                            x_init=grid[0] * x_init, cond=cond)
        return images, {"nfe": jnp.float32(grid.shape[0] - 1)}

    def edit(self, params, rng, x, mask, cond=None, *, aux, task: str, strength: float,
             method: str = "multistep", num_steps: int = 1, sigmas: Sequence[float] = ()):
        """Inpainting (known pixels kept at every step) or SDEdit through multistep consistency
        sampling (Song et al. 2023, Sec. 6.3 and Algorithm 4)."""
        grid = self._grid(method, num_steps, sigmas)
        sample_fn = functools.partial(sampler.consistency_sample, sigma_min=self.sigma_min)
        return edit_with_sampler(sample_fn, grid, self.consistency_fn(params), rng, x, mask,
                                 cond, task=task, strength=strength)


def _check_same_tree(what: str, source, expected) -> None:
    """ConfigError unless `source` has the structure and shapes of `expected`."""
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
    if jax.tree.structure(source) != jax.tree.structure(expected) or \
            shapes(source) != shapes(expected):
        raise ConfigError(f"{what} does not match the network of this config (different "
                          f"architecture); check the teacher's model.* keys")
