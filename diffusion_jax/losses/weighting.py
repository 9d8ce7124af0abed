"""Loss weightings of the DDPM-parameterised models as functions of SNR = alpha^2 / sigma^2.

For x_t = alpha x0 + sigma eps with alpha^2 + sigma^2 = 1, the squared errors of the three
prediction targets are multiples of the x0 error (`parameterization.to_x0` / `to_eps`):
||eps_hat - eps||^2 = SNR ||x0_hat - x0||^2 and ||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2.
Each weighting below but 'uniform' (weight 1 on whichever target is regressed) is stated once,
as the weight w_x0(SNR) of the x0 error, and returned as the weight of the chosen target's
squared error, w_x0 / c_target with c = SNR (epsilon), 1 (x0), SNR + 1 (v): so it gives the
same loss for every target. In the EDM convention
x = x0 + sigma_edm n of the same process, SNR = 1 / sigma_edm^2 (`snr_of_sigma`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError
from diffusion_jax.processes.parameterization import PREDICTION_TARGETS


def snr_of_alpha_bar(alpha_bar: jax.Array) -> jax.Array:
    """SNR_t = alpha_bar_t / (1 - alpha_bar_t) of a discrete schedule."""
    return alpha_bar / (1.0 - alpha_bar)


def snr_of_sigma(sigma: jax.Array) -> jax.Array:
    """SNR = 1 / sigma^2 at the EDM noise level sigma = sigma_t / alpha."""
    return 1.0 / jnp.square(sigma)


def target_factor(snr: jax.Array, target: str) -> jax.Array:
    """c_target with ||target error||^2 = c_target ||x0 error||^2: SNR, 1 or SNR + 1."""
    if target == "epsilon":
        return snr
    if target == "x0":
        return jnp.ones_like(snr)
    if target == "v":
        return snr + 1.0
    raise ConfigError(f"unknown prediction target {target!r}; valid: {', '.join(PREDICTION_TARGETS)}")


def uniform_weight(snr: jax.Array, target: str) -> jax.Array:
    """1 on the target's own error (the simple loss of Ho et al. 2020 for epsilon)."""
    return jnp.ones_like(target_factor(snr, target))


def min_snr_weight(snr: jax.Array, target: str, gamma: float = 5.0) -> jax.Array:
    """Min-SNR-gamma (Hang et al. 2023): w_x0 = min(SNR, gamma), i.e. min(SNR, gamma) / SNR
    on the epsilon error and min(SNR, gamma) / (SNR + 1) on the v error."""
    return jnp.minimum(snr, gamma) / target_factor(snr, target)


def p2_weight(snr: jax.Array, target: str, k: float = 1.0, gamma: float = 1.0) -> jax.Array:
    """P2 weighting (Choi et al. 2022): lambda'_t = lambda_t / (k + SNR)^gamma with lambda_t = 1 of the
    simple epsilon loss, so w_x0 = SNR / (k + SNR)^gamma; gamma = 0 is the simple loss."""
    return snr / (k + snr) ** gamma / target_factor(snr, target)


def edm_weight(snr: jax.Array, target: str, sigma_data: float = 0.5) -> jax.Array:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the denoiser's x0
    error (Karras et al. 2022, Table 1) at sigma = 1 / sqrt(SNR): w_x0 = SNR + 1 / sigma_data^2."""
    return (snr + 1.0 / sigma_data**2) / target_factor(snr, target)


def snr_plus_one_weight(snr: jax.Array, target: str) -> jax.Array:
    """w_x0 = SNR + 1 (Salimans & Ho 2022, Sec. 4, the 'SNR+1' weighting): 1 on the v error, the
    v-prediction loss itself; the EDM weighting with sigma_data = 1."""
    return (snr + 1.0) / target_factor(snr, target)


WEIGHTINGS = {"uniform": uniform_weight, "min_snr": min_snr_weight, "p2": p2_weight,
              "edm": edm_weight, "snr_plus_one": snr_plus_one_weight}


def loss_weight(name: str, snr: jax.Array, target: str, **kwargs) -> jax.Array:
    """The weight WEIGHTINGS[name](snr, target, **kwargs) of the squared error of `target`."""
    if name not in WEIGHTINGS:
        raise ConfigError(f"unknown loss weighting {name!r}; valid: {', '.join(sorted(WEIGHTINGS))}")
    return WEIGHTINGS[name](snr, target, **kwargs)
