"""The MeanFlow objective (Geng et al. 2025, Sec. 4; Gsunshine/meanflow `meanflow.py`).

Time convention of MeanFlow: t = 1 is noise, z_t = (1 - t) x + t e, v = e - x. The average
velocity u(z_t, r, t) = 1 / (t - r) int_r^t v(z_tau, tau) dtau satisfies the MeanFlow identity
(Eq. 6) u = v - (t - r) du/dt with du/dt = v d_z u + d_t u (Eq. 8), the total derivative along
the flow: the jvp of u in (z, t, r) with tangents (v, 1, 0). The network u_theta regresses the
stop-gradient target u_tgt = v - clip(t - r, 0, 1) du_theta/dt (Eq. 9-10) with the squared
error summed over pixels and the adaptive weight 1 / sg(loss + c)^p (Sec. 4.3; `norm_eps` c,
`norm_p` p). Training-time guidance (Sec. 4.2, Eq. 13-19) replaces v by
v_g = omega v + (1 - omega - kappa) u(z, t, t | null) + kappa u(z, t, t | y) inside
[t_start, t_end]: the field of effective scale omega / (1 - kappa).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.processes.sde import expand


def interpolate(x: jax.Array, e: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_t, v): z_t = (1 - t) x + t e and the conditional velocity v = e - x, t (B,)."""
    t = expand(t, x)
    return (1.0 - t) * x + t * e, e - x


def sample_tr(rng: jax.Array, n: int, P_mean: float = -0.4, P_std: float = 1.0,
              data_proportion: float = 0.75) -> tuple[jax.Array, jax.Array]:
    """(t, r), each (n,): two logit-normal draws sigmoid(N(P_mean, P_std^2)), t the larger and
    r the smaller; the first floor(n data_proportion) examples set r = t (the official
    `sample_tr`: that share trains plain flow matching, u(z, t, t) = v)."""
    a, b = jax.nn.sigmoid(P_mean + P_std * jax.random.normal(rng, (2, n)))
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    return t, jnp.where(jnp.arange(n) < int(n * data_proportion), t, r)


def guided_velocity(v: jax.Array, v_uncond: jax.Array, v_cond, t: jax.Array, *, omega: float,
                    kappa: float, t_start: float = 0.0, t_end: float = 1.0) -> jax.Array:
    """v_g = omega v + (1 - omega - kappa) v_uncond + kappa v_cond for t in [t_start, t_end]
    and v outside (Eq. 19; `guidance_fn`: omega -> 1 and kappa -> 0 outside the interval);
    kappa = 0 is v_uncond + omega (v - v_uncond) (Eq. 13) and needs no v_cond (None)."""
    inside = expand((t >= t_start) & (t <= t_end), v)
    w = jnp.where(inside, omega, 1.0)
    if kappa == 0:
        return v_uncond + w * (v - v_uncond)
    k = jnp.where(inside, kappa, 0.0)
    return w * v + (1.0 - w - k) * v_uncond + k * v_cond


def first_dropped(rng: jax.Array, n: int, p: float) -> jax.Array:
    """(n,) bool: the first m examples, m ~ Binomial(n, p) (the official `cond_drop` drops the
    first num_drop of the batch, not random positions; with `sample_tr`'s ordering the dropped
    examples are r = t examples unless m exceeds the r = t share)."""
    m = jnp.sum(jax.random.uniform(rng, (n,)) < p)
    return jnp.arange(n) < m


def target(u_fn: Callable, z: jax.Array, t: jax.Array, r: jax.Array,
           v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(u, u_tgt): u = u_fn(z, t, r) and u_tgt = sg(v - clip(t - r, 0, 1) du/dt) with
    du/dt = jvp of u_fn at (z, t, r) with tangents (v, 1, 0) (Eq. 8-10)."""
    u, du_dt = jax.jvp(u_fn, (z, t, r), (v, jnp.ones_like(t), jnp.zeros_like(r)))
    u_tgt = v - expand(jnp.clip(t - r, 0.0, 1.0), v) * du_dt
    return u, jax.lax.stop_gradient(u_tgt)


def adaptive_loss(u: jax.Array, u_tgt: jax.Array, norm_p: float = 1.0,
                  norm_eps: float = 0.01) -> tuple[jax.Array, jax.Array]:
    """(weighted, raw) per example: raw = sum over pixels of (u - u_tgt)^2 and weighted =
    raw / sg((raw + norm_eps)^norm_p) (Sec. 4.3; p = 0 is the plain squared error)."""
    raw = jnp.sum((u - u_tgt) ** 2, axis=tuple(range(1, u.ndim)))
    return raw / jax.lax.stop_gradient((raw + norm_eps) ** norm_p), raw
