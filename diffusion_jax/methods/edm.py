"""EDM (Karras et al. 2022): a preconditioned denoiser and its weighted loss.

D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Eq. 7) with the coefficients of one column
of Table 1; the network F sees c_noise as its noise input. Training minimises
E lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 with the column's noise distribution and
weight (Eq. 2 and Table 1; EDM: ln sigma ~ N(P_mean, P_std^2)). Sampling is any shared solver
of `samplers.solvers` on D.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax import guidance, preconditioning
from diffusion_jax.losses.edm import edm_loss
from diffusion_jax.methods.network import NetworkMethod, train_condition
from diffusion_jax.samplers import solvers
from diffusion_jax.samplers.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class EDM(NetworkMethod):
    """The EDM method: raw network F + the preconditioning `scheme`, a column of Table 1
    (`preconditioning.COLUMNS`: 'edm' | 'vp' | 've' | 'iddpm', with its training noise levels and
    loss weight)."""

    model: Any  # flax module, apply(params, x, c_noise, cond, train)
    image_shape: tuple
    scheme: Any = preconditioning.EDMPrecond()
    num_classes: int = 0
    label_dropout: float = 0.0
    caption_length: int = 0  # > 0: conditioned on (B, caption_length) caption tokens

    has_denoiser: ClassVar[bool] = True
    default_sampler: ClassVar[Sampler] = Sampler(method="heun", num_steps=18, sigma_min=0.002,
                                                 sigma_max=80.0)

    def preconditioned(self, params, *, train: bool = False, rng=None) -> Callable:
        """D(x, sigma[, cond]) = c_skip x + c_out F(c_in x, c_noise[, cond]) (Eq. 7)."""
        F = lambda x, c_noise, cond=None: self.apply(params, x, c_noise, cond, train=train, rng=rng)
        return preconditioning.precondition(F, self.scheme)

    def loss(self, params, batch: dict, rng: jax.Array, aux=None, step=None):
        """Batch mean of lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 (summed over pixels),
        sigma and lambda from the column of Table 1."""
        loss_rng, dropout_rng, label_rng = jax.random.split(rng, 3)
        cond = train_condition(self, batch, label_rng)
        per_example = edm_loss(self.preconditioned(params, train=True, rng=dropout_rng),
                               batch["image"], loss_rng, cond,
                               sample_sigma=self.scheme.sample_sigma,
                               loss_weight=self.scheme.loss_weight)
        return jnp.mean(per_example), {}

    def denoiser_model(self, params, cond, aux, sampler: Sampler) -> solvers.DenoiserModel:
        """D guided as `sampler.guidance` says: D_u + w (D_c - D_u) in one batched network call
        (`guidance.guide`), over EDM's default range sigma 0.002..80."""
        D = guidance.guide(self.preconditioned(params), cond, self.num_classes,
                           self.caption_length, sampler.guidance)
        return solvers.DenoiserModel(D, 0.002, 80.0)

