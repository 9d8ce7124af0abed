"""MeanFlow sampling (Geng et al. 2025, Algorithm 2; Gsunshine/meanflow `solver_step`) on an
average-velocity function u(z, t, r[, cond]) (t = 1 noise, t = 0 data): each step jumps
z_r = z_t - (t - r) u(z_t, t, r), one network evaluation; one step from t = 1 to r = 0 is the
1-NFE sample z_0 = z_1 - u(z_1, 1, 0)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import expand, per_example

SAMPLERS = ("meanflow",)
AverageVelocityFn = Callable  # u(z, t, r[, cond]), t and r (B,)


def time_grid(num_steps: int) -> jax.Array:
    """num_steps + 1 times uniform from 1 down to 0 (the official default schedule [1, 0] for
    one step)."""
    return jnp.linspace(1.0, 0.0, num_steps + 1)


def sample(u_fn: AverageVelocityFn, x_init: jax.Array, *, ts: jax.Array,
           cond=None) -> jax.Array:
    """z at ts[-1] from x_init at ts[0]: z <- z - (t - r) u(z, t, r) for consecutive (t, r)."""
    def step(i, z):
        t, r = per_example(ts[i], z), per_example(ts[i + 1], z)
        u = u_fn(z, t, r) if cond is None else u_fn(z, t, r, cond)
        return z - expand(t - r, z) * u
    return jax.lax.fori_loop(0, ts.shape[0] - 1, step, x_init)
