"""The adaptive loss weight of sCM (Lu & Song 2024, Sec. 4.4; EDM2's `logvar_linear`, Karras
et al. 2024, Sec. 5): a learned log-variance u(t) of the per-example loss, here a zero-initialised
linear map of the positional embedding of 1000 t (a positional, not Fourier, time embedding:
Fourier features are reported to destabilise consistency training, xandergos/sCM-mnist#5)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import sinusoidal_embedding


class LogVariance(nn.Module):
    """u(t): (B,) times -> (B,) log-variances, 0 at initialisation."""

    channels: int = 128

    @nn.compact
    def __call__(self, t):
        emb = sinusoidal_embedding(1000.0 * jnp.asarray(t, jnp.float32), self.channels)
        return nn.Dense(1, kernel_init=nn.initializers.zeros)(emb)[:, 0]
