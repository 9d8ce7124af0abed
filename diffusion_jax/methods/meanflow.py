"""MeanFlow (Geng et al. 2025): a network of the average velocity u(z_t, r, t), trained with the
MeanFlow identity and sampled in one or a few jumps (`losses.meanflow`, `samplers.meanflow`;
the official JAX code Gsunshine/meanflow `meanflow.py::MeanFlow.forward`).

One training step, as the official `forward`: (t, r) from `sample_tr`, e ~ N(0, I),
z = (1 - t) x + t e, v = e - x; with guidance (omega != 1 or kappa != 0) v_g from the network's
own instantaneous velocities u(z, t, t | null) and u(z, t, t | y) (not trained through: the
official code computes them without dropout and they enter only the stop-gradient target);
the first m ~ Binomial(B, label_dropout) examples get the null label and the unguided v; then
the jvp target and the adaptive loss, averaged over the batch.

The network is a DiT with MeanFlow's h embedder (`models.dit`, `h_embedding=True`) called as
u(z, time_scale t, cond, h=time_scale (t - r)) (`time_inputs` 't_h', the official (t, t - r))
or h=time_scale r ('t_r', the (t, r) conditioning of the paper's Table 1c). Differences from the
official code: the guidance velocities are wrapped in stop_gradient (the official code relies on
the target's stop_gradient; the gradients are the same), and with omega = 1, kappa = 0 no
guidance velocity is evaluated (v_g = v exactly, as the official formula gives).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import meanflow as objective
from diffusion_jax.methods.network import NetworkMethod
from diffusion_jax.processes.sde import expand
from diffusion_jax.samplers import meanflow as meanflow_samplers
from diffusion_jax.samplers.sampler import Sampler

TIME_INPUTS = ("t_h", "t_r")


@dataclasses.dataclass(frozen=True)
class MeanFlow(NetworkMethod):
    """MeanFlow around `model` (a network taking `h=`): (t, r) logit-normal (`P_mean`,
    `P_std`) with a share `data_proportion` of r = t; training-time guidance `omega`, `kappa`
    on t in [`t_start`, `t_end`]; adaptive weight (`norm_p`, `norm_eps`); condition dropout
    `label_dropout`; the network's time inputs `time_inputs` scaled by `time_scale`."""

    model: Any
    image_shape: tuple
    P_mean: float = -0.4
    P_std: float = 1.0
    data_proportion: float = 0.75
    omega: float = 1.0
    kappa: float = 0.0
    t_start: float = 0.0
    t_end: float = 1.0
    norm_p: float = 1.0
    norm_eps: float = 0.01
    time_inputs: str = "t_h"
    time_scale: float = 1.0
    num_classes: int = 0
    label_dropout: float = 0.0
    caption_length: int = 0

    default_sampler: ClassVar[Sampler] = Sampler(method="meanflow", num_steps=1)

    def u(self, params, z, t, r, cond=None, *, train: bool = False, rng=None) -> jax.Array:
        """The average velocity u(z, t, r[, cond]) of the network, t and r (B,)."""
        second = t - r if self.time_inputs == "t_h" else r
        rngs = {"dropout": rng} if train and rng is not None else None
        return self.model.apply({"params": params}, z, self.time_scale * t, cond, train=train,
                                h=self.time_scale * second, rngs=rngs)

    @property
    def guided(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0

    def guided_velocity(self, params, z, t, v, labels) -> jax.Array:
        """v_g of `objective.guided_velocity` from the network's u(z, t, t) with the null label
        and with `labels` (the latter only when kappa != 0), outside the gradient."""
        null = jnp.full_like(labels, self.num_classes)
        v_uncond = self.u(params, z, t, t, null)
        v_cond = self.u(params, z, t, t, labels) if self.kappa else None
        return objective.guided_velocity(v, jax.lax.stop_gradient(v_uncond),
                                         jax.lax.stop_gradient(v_cond), t, omega=self.omega,
                                         kappa=self.kappa, t_start=self.t_start,
                                         t_end=self.t_end)

    def per_example_loss(self, params, x, labels, t, r, e, drop, *, rng=None) -> tuple:
        """(weighted, raw, v_loss) per example at the draws (t, r, e) and dropout mask `drop`:
        the official loss before its batch mean, and sum (u - v)^2 for monitoring."""
        z, v = objective.interpolate(x, e, t)
        v_g, cond = v, None
        if self.num_classes:
            if self.guided:
                v_g = self.guided_velocity(params, z, t, v, labels)
            cond = jnp.where(drop, self.num_classes, labels)
            v_g = jnp.where(expand(drop, v), v, v_g)
        u, u_tgt = objective.target(
            lambda z, t, r: self.u(params, z, t, r, cond, train=True, rng=rng), z, t, r, v_g)
        weighted, raw = objective.adaptive_loss(u, u_tgt, self.norm_p, self.norm_eps)
        v_loss = jnp.sum((u - v) ** 2, axis=tuple(range(1, x.ndim)))
        return weighted, raw, v_loss

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        """The batch mean of the adaptively weighted loss; metrics: the unweighted squared error
        and the velocity error sum (u - v)^2 (the official `v_loss`)."""
        tr_rng, e_rng, drop_rng, dropout_rng = jax.random.split(rng, 4)
        x = batch["image"]
        t, r = objective.sample_tr(tr_rng, x.shape[0], self.P_mean, self.P_std,
                                   self.data_proportion)
        e = jax.random.normal(e_rng, x.shape, x.dtype)
        drop = objective.first_dropped(drop_rng, x.shape[0], self.label_dropout)
        labels = batch["label"] if self.num_classes else None
        weighted, raw, v_loss = self.per_example_loss(params, x, labels, t, r, e, drop,
                                                      rng=dropout_rng)
        return jnp.mean(weighted), {"mse": jnp.mean(raw), "v_loss": jnp.mean(v_loss)}

    def chains(self) -> dict:
        return {"meanflow": (self._meanflow, None)}

    def check_sampler(self, sampler: Sampler) -> None:
        """Guidance is trained into the network (omega, kappa); sampling takes none."""
        if sampler.guidance_scale != 1.0:
            raise ConfigError("MeanFlow's guidance is trained in (meanflow.omega, "
                              "meanflow.kappa); set sampling.guidance_scale=1")

    def _meanflow(self, params, rng, x_init, cond, aux, sampler: Sampler):
        """`samplers.meanflow.sample` on `sampler.num_steps` uniform steps from 1 to 0."""
        def u_fn(z, t, r, cond=None):
            return self.u(params, z, t, r, cond)
        x = meanflow_samplers.sample(u_fn, x_init, ts=meanflow_samplers.time_grid(
            sampler.num_steps), cond=cond)
        return x, {"nfe": jnp.asarray(sampler.num_steps, jnp.float32)}
