"""The continuous-time consistency objective of sCM (Lu & Song 2024, Sec. 4) in TrigFlow.

With f(x_t, t) = cos t x_t - sin t sigma_d F(x_t / sigma_d, t), the time derivative along the
PF-ODE is

    df/dt = -cos t (sigma_d F- - dx_t/dt) - sin t (x_t + sigma_d dF-/dt),

dF-/dt = the JVP of F- with tangents (dx_t/dt / sigma_d, 1). The training tangent is
g = cos t df/dt with the second term warmed up (Sec. 4.3, "tangent warmup"):

    g = -cos^2 t (sigma_d F- - dx_t/dt) - r (cos t sin t x_t + sigma_d cos t sin t dF-/dt),

r = min(1, step / warmup). The JVP is taken with tangents scaled by cos t sin t
(cos t sin t dx_t/dt / sigma_d, cos t sin t), as xandergos/sCM-mnist does: it is the same
product, and it keeps the derivative of c_noise(t) = ln(sigma_d tan t) / 4 (an EDM network)
finite at both ends. Tangent normalisation g <- g / (||g|| + c), c = 0.1 (Sec. 4.3; ||.|| the
L2 norm over one example, as the paper writes it; sCM-mnist uses the RMS instead). The loss with
the adaptive weighting (Sec. 4.4, Eq. 8), written with the log-variance u = -w_phi of EDM2:

    L = e^{-u(t)} / D ||F_theta - F- - g||^2 + u(t),

whose gradient in theta is -2 e^{-u} / D g^T dF_theta/dtheta: at u = 0 the gradient of the
discrete objective E[(1 / (sigma_d tan t)) ||f(x_t, t) - f-(x_{t - dt}, t - dt)||^2] / dt as
dt -> 0 (the prior weighting 1 / sigma is the cos t of g; tests/test_scm.py checks the limit).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.processes.trigflow import expand

TANGENT_C = 0.1  # the paper's normalisation constant c


def tangent_warmup(step, warmup_steps: int):
    """r = min(1, step / warmup_steps); 1 without warm-up."""
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def normalize_tangent(g, c: float = TANGENT_C):
    """g / (||g|| + c) per example; c <= 0: g unchanged."""
    if c <= 0:
        return g
    norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)), keepdims=True))
    return g / (norm + c)


def network_and_tangent(F: Callable, x_t, t, dxt_dt, r, sigma_d: float):
    """(F(x_t / sigma_d, t), g) in one `jax.jvp` through F(y, t): the network output (with its
    parameter gradient) and the tangent g = cos t df-/dt of the module docstring (with r on the
    second term), under stop-gradient."""
    cos, sin = jnp.cos(expand(t, x_t)), jnp.sin(expand(t, x_t))
    F_theta, jvp = jax.jvp(F, (x_t / sigma_d, t),
                           (cos * sin * dxt_dt / sigma_d, jnp.cos(t) * jnp.sin(t)))
    F_minus, jvp = jax.lax.stop_gradient((F_theta, jvp))
    g = -cos**2 * (sigma_d * F_minus - dxt_dt) - r * (cos * sin * x_t + sigma_d * jvp)
    return F_theta, g


def scm_loss(F_theta, g, logvar):
    """Per example e^{-u} / D ||F_theta - F- - g||^2 + u (Eq. 8; F- = F_theta under
    stop-gradient, u = `logvar` (B,))."""
    diff = F_theta - jax.lax.stop_gradient(F_theta) - g
    mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
    return jnp.exp(-logvar) * mse + logvar
