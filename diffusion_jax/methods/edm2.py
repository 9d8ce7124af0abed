"""EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models"): EDM's preconditioned denoiser on the magnitude-preserving U-Net, trained with the
loss of learned uncertainty, its weights kept at unit norm by forced weight normalisation.

- Preconditioning: EDM's (Karras et al. 2022, Table 1) with sigma_data 0.5 and
  c_noise = ln(sigma) / 4, as NVlabs/edm2 `Precond`; training levels ln sigma ~
  N(P_mean, P_std^2) (ImageNet-512: -0.4, 1.0; ImageNet-64: -0.8, 1.6).
- Loss (Sec. 2, Eqs. 14-16 and 21; NVlabs `EDM2Loss`): per example
  sum over the data dimensions of (lambda(sigma) / e^u(sigma)) (D(y + sigma n) - y)^2 + u(sigma),
  lambda = (sigma^2 + sd^2) / (sigma sd)^2 and u the network's log-variance head
  (`models.edm2_unet.EDM2UNet(..., return_logvar=True)`). As in NVlabs' code u is added once per
  element, so an example carries H W C u; NVlabs then sums the element losses and divides by
  the batch size, which is the batch mean taken here.
- Forced weight normalisation (Eq. 66): `constrain_params` re-normalises every MP weight after
  each optimiser step (`mp_layers.force_weight_norm`); NVlabs does it at the start of the next
  training forward pass, which stores the same weights.
- Sampling: any shared solver on D, by default EDM's Heun with 32 steps, sigma 0.002..80,
  rho 7 (63 network evaluations; NVlabs `generate_images.py`).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax import denoisers, preconditioning
from diffusion_jax.methods.edm import EDM
from diffusion_jax.methods.network import train_condition
from diffusion_jax.models.mp_layers import force_weight_norm
from diffusion_jax.samplers.sampler import Sampler

EDM2_PRECOND = preconditioning.EDMPrecond(sigma_data=0.5, P_mean=-0.4, P_std=1.0)


def noise_levels_and_noise(scheme, rng: jax.Array, shape: tuple) -> tuple:
    """(sigma (B,), n of `shape`): ln sigma ~ N(P_mean, P_std^2) and n ~ N(0, I), the draws of
    one loss evaluation."""
    sigma_rng, noise_rng = jax.random.split(rng)
    return scheme.sample_sigma(sigma_rng, shape[0]), jax.random.normal(noise_rng, shape)


def uncertainty_loss(denoised: jax.Array, y: jax.Array, weight: jax.Array,
                     logvar: jax.Array) -> jax.Array:
    """Per example sum over the data dimensions of (weight / e^u) (D - y)^2 + u (Eq. 21), with
    `weight` and `logvar` u of shape (B,)."""
    w = denoisers.expand(weight * jnp.exp(-logvar), y)
    u = denoisers.expand(logvar, y)
    return jnp.sum(w * jnp.square(denoised - y) + u, axis=tuple(range(1, y.ndim)))


@dataclasses.dataclass(frozen=True)
class EDM2(EDM):
    """EDM with EDM2's loss and stored-weight constraint; `model` returns (F, u) when called
    with `return_logvar=True` (`EDM2UNet`). `scheme` is an `EDMPrecond` (its P_mean, P_std)."""

    scheme: preconditioning.EDMPrecond = EDM2_PRECOND

    default_sampler: ClassVar[Sampler] = Sampler(method="heun", num_steps=32, sigma_min=0.002,
                                                 sigma_max=80.0)

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        """Batch mean of `uncertainty_loss` at sigma from the scheme's log-normal; metrics: the
        EDM loss lambda ||D - y||^2 (summed over pixels) and u, batch means."""
        loss_rng, dropout_rng, label_rng = jax.random.split(rng, 3)
        cond = train_condition(self, batch, label_rng)
        y = batch["image"]
        sigma, n = noise_levels_and_noise(self.scheme, loss_rng, y.shape)
        c = self.scheme(sigma)
        x = y + denoisers.expand(sigma, y) * n
        F, logvar = self.model.apply({"params": params}, denoisers.expand(c.c_in, y) * x,
                                     c.c_noise, cond, train=True,
                                     rngs={"dropout": dropout_rng}, return_logvar=True)
        denoised = denoisers.expand(c.c_skip, y) * x + denoisers.expand(c.c_out, y) * F
        weight = self.loss_weight(sigma)
        per_example = uncertainty_loss(denoised, y, weight, logvar)
        edm = weight * jnp.sum(jnp.square(denoised - y), axis=tuple(range(1, y.ndim)))
        return jnp.mean(per_example), {"edm_loss": jnp.mean(edm), "logvar": jnp.mean(logvar)}

    def constrain_params(self, params):
        """Forced weight normalisation: every MP weight at unit root mean square per output
        channel (Eq. 66)."""
        return force_weight_norm(params)
