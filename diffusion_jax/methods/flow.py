"""Flow matching (Lipman et al. 2023), rectified flow (Liu et al. 2023) and SiT's stochastic
interpolants (Ma et al. 2024) on the paths of `processes.interpolants` (t = 0 data, t = 1 noise).

Training: t from `t_distribution` (uniform on [train_eps, 1 - train_eps], SD3's logit-normal
(m, s), or the flow_matching library's skewed form), x_t = alpha_t x + sigma_t eps, and the
network F(x_t, time_scale t[, cond]) regresses its `prediction` (SiT's
`Transport.training_losses`, squared errors averaged over pixels): velocity ||F - v||^2 with
v = alpha' x + sigma' eps; noise lambda_t ||F - eps||^2; score lambda_t ||sigma_t F + eps||^2,
lambda_t SiT's weight ('none' 1, 'velocity' (g / sigma)^2, 'likelihood' g / sigma^2). Every
prediction is an exact affine function of (x_t, E[x0 | x_t]), so `denoiser_model` is the
network as EDM's D(x, sigma) (`interpolants.denoiser`) and every shared solver, guidance and
the editing tasks run on it; the flow-native samplers (`samplers.flow`) run on the velocity.
Guidance combines the raw predictions (the same combination as on D: each is affine in x0 with
coefficients of t alone). Reflow (Liu et al. 2023, Alg. 1; `diffusion_jax.reflow`): a `coupled`
model trains on fixed pairs (x, eps) of a flow's ODE, each batch image the pair concatenated on
the channel axis, instead of drawing eps independently of x. With `distill_steps` k > 0 the
coupled model is distilled for k Euler steps instead (gnobitab/RectifiedFlow `losses.py`,
`reflow_t_schedule` 't0' for k = 1, the integer k otherwise): t only on the k-step grid
1 - train_eps - j (1 - train_eps) / k, j = 0..k-1 (their t_L = j (1 - eps) / k + eps in their
time t_L = 1 - t), and for k = 1 the `distill_loss` may be LPIPS (Liu et al. 2023, Sec. 5.1:
the best one-step distance) between the one-step sample eps - F and x (their `z0 + score`,
taken from the noise eps itself, as they do), or LPIPS plus the velocity's squared error.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax import guidance
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import lpips
from diffusion_jax.methods.base import WeightsFile
from diffusion_jax.methods.network import NetworkMethod, train_condition
from diffusion_jax.processes import interpolants
from diffusion_jax.samplers import flow as flow_samplers
from diffusion_jax.samplers import solvers
from diffusion_jax.samplers.sampler import Sampler

PREDICTIONS = {"velocity": "velocity", "noise": "eps", "score": "score"}  # -> interpolants'
DISTILL_LOSSES = ("l2", "lpips", "lpips+l2")


def distill_times(num_steps: int, train_eps: float) -> jax.Array:
    """The k = `num_steps` training times of k-step distillation, from the noise end: 1 - eps -
    j (1 - eps) / k, j = 0..k-1 (RectifiedFlow's grid in t = 1 - t_L)."""
    j = jnp.arange(num_steps, dtype=jnp.float32)
    return 1.0 - train_eps - j * (1.0 - train_eps) / num_steps


@dataclasses.dataclass(frozen=True)
class Flow(NetworkMethod):
    """A flow-matching model: network `model`, interpolant `path` (`interpolants.PATHS`), its
    `prediction` ('velocity', 'noise' or 'score'), training times `t_distribution`
    (`interpolants.T_DISTRIBUTIONS`, logit-normal with `logit_mean`, `logit_std`) and SiT's
    `loss_weighting` of the eps and score losses (`interpolants.WEIGHTINGS`). The network's time
    input is `time_scale` t (1: SiT; Liu et al. feed 999 t in their reversed time)."""

    model: Any
    image_shape: tuple
    path: Any = interpolants.Linear()
    prediction: str = "velocity"
    t_distribution: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weighting: str = "none"
    train_eps: float = 0.0
    time_scale: float = 1.0
    num_classes: int = 0
    label_dropout: float = 0.0
    caption_length: int = 0
    coupled: bool = False  # batches are reflow pairs [x, eps] (channels 2 C)
    distill_steps: int = 0  # > 0 (coupled): distil for this many Euler steps, t on their grid
    distill_loss: str = "l2"  # 'l2', 'lpips' or 'lpips+l2' (LPIPS: one-step distillation)
    lpips_weights: str = ""  # the LPIPS .npz (`losses.lpips`) of an LPIPS distill_loss
    lpips_resize: int = 224  # images are resized bilinearly to this size before LPIPS

    has_denoiser: ClassVar[bool] = True
    default_sampler: ClassVar[Sampler] = Sampler(method="flow_heun", num_steps=32, rtol=1e-3,
                                                 atol=1e-6)

    @property
    def kind(self) -> str:
        """The prediction's name in `interpolants.PREDICTIONS`."""
        return PREDICTIONS[self.prediction]

    def network(self, params, *, train: bool = False, rng=None) -> Callable:
        """The raw prediction F(x_t, t[, cond]) at our time t (B,): the network's first C output
        channels for C input channels (a `learn_sigma` DiT's second half dropped, as SiT does)."""
        def F(x, t, cond=None):
            out = self.apply(params, x, self.time_scale * t, cond, train=train, rng=rng)
            return out[..., :x.shape[-1]]
        return F

    # --- aux state: the LPIPS weights of one-step distillation --------------------------------
    @property
    def uses_lpips(self) -> bool:
        return self.distill_loss != "l2"

    def requirements(self) -> dict:
        return {"lpips": WeightsFile("lpips", self.lpips_weights)} if self.uses_lpips else {}

    def init_aux(self, params, rng):
        """{} or the shapes of the LPIPS weights (restored by `start`); a ConfigError for a
        distillation without pairs or without its LPIPS weights file."""
        if self.distill_steps and not self.coupled:
            raise ConfigError(f"flow.distill_steps={self.distill_steps} distils the fixed pairs "
                              f"of flow.coupling_dir: set a coupling_dir, or distill_steps=0")
        if not self.uses_lpips:
            return {}
        if not self.lpips_weights:
            raise ConfigError(f"flow.distill_loss={self.distill_loss!r} needs flow.lpips_weights:"
                              f" the .npz made by tools/convert_lpips_weights.py")
        return {"lpips": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                      lpips.abstract_lpips_params())}

    def sample_t(self, rng: jax.Array, n: int) -> jax.Array:
        """Training times from `t_distribution`, or of distillation on its k-step grid."""
        if self.distill_steps:
            grid = distill_times(self.distill_steps, self.train_eps)
            return grid[jax.random.randint(rng, (n,), 0, self.distill_steps)]
        if self.t_distribution == "logit_normal":
            return interpolants.sample_logit_normal(rng, n, self.logit_mean, self.logit_std)
        if self.t_distribution == "skewed":
            return interpolants.sample_skewed(rng, n)
        return interpolants.sample_uniform(rng, n, self.train_eps, 1.0 - self.train_eps)

    def per_example_loss(self, fn: Callable, x: jax.Array, t: jax.Array, eps: jax.Array,
                         cond=None) -> jax.Array:
        """SiT's loss of the prediction network fn(x_t, t[, cond]) at (x, t, eps), per example."""
        x_t = interpolants.interpolate(self.path, t, x, eps)
        pred = fn(x_t, t) if cond is None else fn(x_t, t, cond)
        axes = tuple(range(1, x.ndim))
        if self.prediction == "velocity":
            return jnp.mean((pred - interpolants.velocity(self.path, t, x, eps)) ** 2, axes)
        weight = interpolants.loss_weight(self.path, t, self.loss_weighting)
        if self.prediction == "noise":
            error = pred - eps
        else:
            error = interpolants.expand(self.path.sigma(t), x) * pred + eps
        return weight * jnp.mean(error**2, axes)

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        """Batch mean of `per_example_loss` with t from `sample_t` and eps ~ N(0, I), or with
        `coupled` the eps paired with each x (the batch image [x, eps])."""
        t_rng, eps_rng, dropout_rng, label_rng = jax.random.split(rng, 4)
        x = batch["image"]
        if self.coupled:
            x, eps = jnp.split(x, 2, axis=-1)
        else:
            eps = jax.random.normal(eps_rng, x.shape, x.dtype)
        t = self.sample_t(t_rng, x.shape[0])
        cond = train_condition(self, batch, label_rng)
        fn = self.network(params, train=True, rng=dropout_rng)
        if self.uses_lpips:
            return self.lpips_distill_loss(fn, aux["lpips"], x, t, eps, cond)
        return jnp.mean(self.per_example_loss(fn, x, t, eps, cond)), {}

    def lpips_distill_loss(self, fn: Callable, lpips_params, x, t, eps, cond=None) -> tuple:
        """One-step distillation (RectifiedFlow `reflow_loss` 'lpips' / 'lpips+l2'):
        LPIPS(eps - F(x_t, t), x) on the velocity F at t = 1 - train_eps, plus for 'lpips+l2'
        the velocity's squared error averaged over pixels; batch means."""
        x_t = interpolants.interpolate(self.path, t, x, eps)
        pred = fn(x_t, t) if cond is None else fn(x_t, t, cond)
        distance = lpips.lpips_distance_fn(lpips_params, resize_to=self.lpips_resize)
        perceptual = distance(eps - pred, x)
        if self.distill_loss == "lpips":
            return jnp.mean(perceptual), {}
        l2 = jnp.mean((pred - interpolants.velocity(self.path, t, x, eps)) ** 2,
                      tuple(range(1, x.ndim)))
        return jnp.mean(perceptual + l2), {"lpips": jnp.mean(perceptual), "l2": jnp.mean(l2)}

    def guided_prediction(self, params, cond, sampler: Sampler) -> Callable:
        """F guided as `sampler.guidance` says (`guidance.guide`, the interval in EDM sigma
        sigma_t / alpha_t, optionally on the first `guidance_channels` channels). t = 1, where
        alpha may be 0, counts as t = 1 - 1e-7 (sigma ~ 1e7, inside the configs' finite
        'no upper limit' 1e9)."""
        sigma_of = lambda t: interpolants.edm_sigma(self.path, jnp.minimum(t, 1.0 - 1e-7))
        return guidance.guide(self.network(params), cond, self.num_classes, self.caption_length,
                              sampler.guidance, sigma_of=sigma_of)

    def velocity_fn(self, params, cond, sampler: Sampler) -> Callable:
        """The (guided) velocity v(x_t, t[, cond]) converted from the network's prediction."""
        F = self.guided_prediction(params, cond, sampler)

        def velocity(x, t, cond=None):
            pred = F(x, t) if cond is None else F(x, t, cond)
            return interpolants.convert(self.path, pred, x, t, self.kind, "velocity")
        return velocity

    def chains(self) -> dict:
        return {name: (self._flow, None) for name in flow_samplers.SAMPLERS}

    def _flow(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """`samplers.flow.run` of `sampler.method` on the velocity."""
        x, nfe = flow_samplers.run(
            sampler.method, self.velocity_fn(params, cond, sampler), self.path, self.kind,
            rng, x_init, num_steps=sampler.num_steps, sample_eps=sampler.sample_eps,
            rtol=sampler.rtol, atol=sampler.atol, diffusion_form=sampler.diffusion_form,
            diffusion_norm=sampler.diffusion_norm, last_step=sampler.last_step,
            last_step_size=sampler.last_step_size, cond=cond)
        return x, {"nfe": jnp.asarray(nfe, jnp.float32)}

    def denoiser_model(self, params, cond, aux, sampler: Sampler) -> solvers.DenoiserModel:
        """D(x, sigma[, cond]) of the guided prediction (`interpolants.denoiser`) over EDM's
        default range 0.002..80 (the linear path's sigma_min as its lower end when larger)."""
        D = interpolants.denoiser(self.path, self.guided_prediction(params, cond, sampler),
                                  self.kind)
        lo = max(0.002, float(getattr(self.path, "sigma_min", 0.0)))
        return solvers.DenoiserModel(D, lo, 80.0)
