"""Probability-flow ODE samplers (Song et al. 2021, Sec. 4.3): dx/dt = f(x, t) - g(t)^2 / 2 s(x, t).

`ode_solve` integrates any vector field from t0 to t1, forwards or backwards, either with an
adaptive embedded Runge-Kutta pair through diffrax ('tsit5' or 'dopri5', the paper's RK45 with
rtol = atol = 1e-5) or with N fixed steps of 'euler', 'heun' or 'rk4' in a `jax.lax.fori_loop`.
The state may be any pytree (the likelihood adds a log-density channel). Each solve returns the
number of function evaluations (NFE):

- fixed steps: N times the stages (1, 2, 4);
- adaptive: the pairs here are FSAL (first stage = last stage of the previous step), so
  NFE = 1 + 6 * (accepted + rejected steps); `dt0` is always given, so no evaluations go into
  choosing the first step.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import diffrax
import jax
import jax.numpy as jnp

from diffusion_jax.processes.sde import SDE, ScoreFn

VectorField = Callable[[Any, jax.Array], Any]  # (y, t) -> dy/dt, t a scalar
ADAPTIVE = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
FIXED_STAGES = {"euler": 1, "heun": 2, "rk4": 4}


def _axpy(a, x, y):
    """y + a x over pytrees."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _fixed_step(method: str, fn: VectorField, y, t, h):
    if method == "euler":
        return _axpy(h, fn(y, t), y)
    if method == "heun":
        k1 = fn(y, t)
        k2 = fn(_axpy(h, k1, y), t + h)
        return _axpy(h / 2, jax.tree.map(jnp.add, k1, k2), y)
    k1 = fn(y, t)
    k2 = fn(_axpy(h / 2, k1, y), t + h / 2)
    k3 = fn(_axpy(h / 2, k2, y), t + h / 2)
    k4 = fn(_axpy(h, k3, y), t + h)
    k = jax.tree.map(lambda a, b, c, d: a + 2 * b + 2 * c + d, k1, k2, k3, k4)
    return _axpy(h / 6, k, y)


def ode_solve(fn: VectorField, y0, t0: float, t1: float, *, method: str = "tsit5",
              rtol: float = 1e-5, atol: float = 1e-5, num_steps: Optional[int] = None,
              max_steps: int = 16384) -> tuple[Any, jax.Array]:
    """y(t1) of dy/dt = fn(y, t), y(t0) = y0, and the NFE (adaptive: a traced int32).

    Adaptive methods take `rtol`/`atol` (error measured in the RMS norm over the whole state);
    fixed-step methods take `num_steps` uniform steps.
    """
    if method in FIXED_STAGES:
        if num_steps is None:
            raise ValueError(f"fixed-step method {method!r} needs num_steps")
        h = (t1 - t0) / num_steps
        step = lambda i, y: _fixed_step(method, fn, y, t0 + i * h, h)
        return jax.lax.fori_loop(0, num_steps, step, y0), num_steps * FIXED_STAGES[method]
    if method not in ADAPTIVE:
        raise ValueError(f"unknown ODE method {method!r}; valid: {sorted({**ADAPTIVE, **FIXED_STAGES})}")
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: fn(y, t)), ADAPTIVE[method](), t0, t1,
        dt0=(t1 - t0) / 100, y0=y0, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps)
    nfe = 1 + 6 * solution.stats["num_steps"]
    return jax.tree.map(lambda y: y[-1], solution.ys), nfe


def _batched(drift: Callable[[jax.Array, jax.Array], jax.Array]) -> VectorField:
    return lambda x, t: drift(x, jnp.full((x.shape[0],), t, x.dtype))


def ode_sample(score_fn: ScoreFn, sde: SDE, rng: jax.Array, shape, *, eps: float = 1e-3,
               x_init: Optional[jax.Array] = None, t_start: Optional[float] = None,
               **solver) -> tuple[jax.Array, jax.Array]:
    """x(eps) from x(T) ~ p_T (or `x_init`) along the probability-flow ODE (Eq. 13), and the NFE.

    `t_start` (default T) is the time of x_init (SDEdit starts below T). `solver` goes to
    `ode_solve` (method, rtol, atol, num_steps).
    """
    x = sde.prior_sampling(rng, shape) if x_init is None else x_init
    t_start = sde.T if t_start is None else t_start
    return ode_solve(_batched(sde.probability_flow_drift(score_fn)), x, t_start, eps, **solver)
