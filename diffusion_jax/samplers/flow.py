"""Flow-native samplers on a velocity function v(x, t[, cond]) of an interpolant
(`processes.interpolants`; t = 1 noise, t = 0 data, v = dx_t / dt): each integrates from x at
t_hi down to t_lo over a time grid and loops with `jax.lax`.

- `euler_sample`, `heun_sample`: the ODE dx = v dt with fixed steps on a uniform grid in t
  (Euler 1 evaluation per step, Heun 2: orders 1 and 2).
- `dopri5_sample`: the same ODE with diffrax's adaptive Dormand-Prince 5(4) (`samplers.ode`;
  SiT's default ODE solver, its rtol 1e-3 and atol 1e-6).
- `sde_sample`: SiT's SDE sampler (`transport/integrators.py::sde`, `Sampler.sample_sde`),
  Euler-Maruyama on dx = (v - w_t score) dt + sqrt(2 w_t) dW backward in t
  (`interpolants.sde_drift`), whose marginals are the path's for every w_t >= 0, with w_t one of
  SiT's diffusion forms and one of its last steps from t_lo = last_step_size to 0: 'mean' (the
  step's drift without noise), 'tweedie' (E[x0 | x_t]), 'euler' (the ODE step), 'none' (stop at
  t_lo). As in SiT, num_steps grid points give num_steps - 1 stochastic steps, then the last.

`time_interval` is SiT's `check_interval` in this time convention.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.denoisers import call, expand, per_example
from diffusion_jax.processes import interpolants
from diffusion_jax.samplers import ode

SAMPLERS = ("flow_euler", "flow_heun", "flow_dopri5", "flow_sde")
DIFFUSION_FORMS = interpolants.DIFFUSION_FORMS
LAST_STEPS = ("mean", "tweedie", "euler", "none")
VelocityFn = Callable  # v(x, t[, cond]), t (B,)


def default_sample_eps(path, prediction: str) -> float:
    """SiT's `sample_eps` (`transport/__init__.py::create_transport`): 0 for a velocity network
    on the linear or GVP path (stable up to both ends), else 1e-3."""
    stable = prediction == "velocity" and not isinstance(path, interpolants.VP)
    return 0.0 if stable else 1e-3


def time_interval(path, prediction: str, *, eps: float, sde: bool = False,
                  diffusion_form: str = "sigma", last_step_size: float = 0.0) -> tuple:
    """(t_hi, t_lo): SiT's `check_interval(..., eval=True)` at t = 1 - t_SiT. VP ends at eps (the
    SDE at last_step_size); linear / GVP with a noise or score network, or with the SDE, start at
    1 - eps when the network is not a velocity or the form is SBDM (whose w_t is infinite at
    t = 1 on the linear path; there eps is at least 1e-3, where SiT's eps 0 gives inf) and end at
    eps (the SDE at last_step_size); a velocity ODE on linear / GVP runs over [0, 1]."""
    t_lo = last_step_size if sde and last_step_size > 0 else eps
    if isinstance(path, interpolants.VP):
        return 1.0, t_lo
    if prediction != "velocity" or sde:
        sbdm = sde and diffusion_form == "SBDM"
        start = max(eps, 1e-3) if sbdm else eps
        return (1.0 - start if sbdm or prediction != "velocity" else 1.0), t_lo
    return 1.0, 0.0


def time_grid(num_points: int, t_hi: float, t_lo: float) -> jax.Array:
    """num_points times uniform from t_hi down to t_lo (num_points - 1 steps)."""
    return jnp.linspace(t_hi, t_lo, num_points)


def _v(velocity_fn, x, t, cond):
    return call(velocity_fn, x, per_example(t, x), cond)


def euler_sample(velocity_fn: VelocityFn, x_init: jax.Array, *, ts: jax.Array,
                 cond=None) -> jax.Array:
    """x at ts[-1] from x_init at ts[0]: x <- x + (t_next - t) v(x, t)."""
    def step(i, x):
        return x + (ts[i + 1] - ts[i]) * _v(velocity_fn, x, ts[i], cond)
    return jax.lax.fori_loop(0, ts.shape[0] - 1, step, x_init)


def heun_sample(velocity_fn: VelocityFn, x_init: jax.Array, *, ts: jax.Array,
                cond=None) -> jax.Array:
    """x at ts[-1] from x_init at ts[0], Heun's trapezoidal predictor-corrector per step."""
    def step(i, x):
        h = ts[i + 1] - ts[i]
        v1 = _v(velocity_fn, x, ts[i], cond)
        v2 = _v(velocity_fn, x + h * v1, ts[i + 1], cond)
        return x + 0.5 * h * (v1 + v2)
    return jax.lax.fori_loop(0, ts.shape[0] - 1, step, x_init)


def dopri5_sample(velocity_fn: VelocityFn, x_init: jax.Array, *, t_hi: float, t_lo: float,
                  rtol: float, atol: float, cond=None) -> tuple[jax.Array, jax.Array]:
    """(x at t_lo, NFE) of the ODE from x_init at t_hi with adaptive dopri5 (`ode.ode_solve`)."""
    return ode.ode_solve(lambda x, t: _v(velocity_fn, x, t, cond), x_init, t_hi, t_lo,
                         method="dopri5", rtol=rtol, atol=atol)


def sde_sample(velocity_fn: VelocityFn, path, rng: jax.Array, x_init: jax.Array, *,
               ts: jax.Array, diffusion_form: str = "sigma", diffusion_norm: float = 1.0,
               last_step: str = "mean", cond=None) -> jax.Array:
    """SiT's Euler-Maruyama SDE sampler from x_init at ts[0] to ts[-1], then `last_step` from
    ts[-1] to 0: x <- x - h (v - w score) + sqrt(2 w h) xi with h = t - t_next > 0, w = w_t of
    (diffusion_form, diffusion_norm) and the score converted from v (`interpolants.convert`)."""
    def drift_and_w(x, t):
        t = per_example(t, x)
        v = _v(velocity_fn, x, t, cond)
        score = interpolants.convert(path, v, x, t, "velocity", "score")
        w = interpolants.diffusion_coefficient(path, t, diffusion_form, diffusion_norm)
        return interpolants.sde_drift(v, score, w), w, v, score

    def step(i, carry):
        x, key = carry
        key, sub = jax.random.split(key)
        h = ts[i] - ts[i + 1]
        drift, w, _, _ = drift_and_w(x, ts[i])
        noise = jax.random.normal(sub, x.shape, x.dtype)
        return x - h * drift + expand(jnp.sqrt(2.0 * w * h), x) * noise, key

    x, _ = jax.lax.fori_loop(0, ts.shape[0] - 1, step, (x_init, rng))
    if last_step == "none":
        return x
    h = ts[-1]
    drift, _, v, score = drift_and_w(x, ts[-1])
    if last_step == "mean":
        return x - h * drift
    if last_step == "euler":
        return x - h * v
    t = per_example(ts[-1], x)
    a, s = expand(path.alpha(t), x), expand(path.sigma(t), x)
    return (x + s**2 * score) / a


def nfe(method: str, num_steps: int, last_step: str = "mean") -> int:
    """Network evaluations of the fixed-grid samplers (a guided 2B batch is one): Euler
    num_steps, Heun 2 num_steps, the SDE num_steps - 1 steps and 1 for a last step."""
    if method == "flow_euler":
        return num_steps
    if method == "flow_heun":
        return 2 * num_steps
    return num_steps - 1 + (last_step != "none")


def run(method: str, velocity_fn: VelocityFn, path, prediction: str, rng: jax.Array,
        x_init: jax.Array, *, num_steps: int, sample_eps: float = -1.0, rtol: float = 1e-3,
        atol: float = 1e-6, diffusion_form: str = "sigma", diffusion_norm: float = 1.0,
        last_step: str = "mean", last_step_size: float = 0.04,
        cond=None) -> tuple[jax.Array, jax.Array]:
    """(x at t_lo, NFE) of flow sampler `method` (`SAMPLERS`) from standard-normal x_init taken
    as x at t_hi (`time_interval`; as SiT does, also when t_hi = 1 - eps); sample_eps < 0 is
    `default_sample_eps`. Euler and Heun take num_steps steps, the SDE num_steps points."""
    eps = default_sample_eps(path, prediction) if sample_eps < 0 else sample_eps
    sde = method == "flow_sde"
    t_hi, t_lo = time_interval(path, prediction, eps=eps, sde=sde, diffusion_form=diffusion_form,
                               last_step_size=last_step_size if last_step != "none" else 0.0)
    x = x_init
    if method == "flow_dopri5":
        return dopri5_sample(velocity_fn, x, t_hi=t_hi, t_lo=t_lo, rtol=rtol, atol=atol,
                             cond=cond)
    if sde:
        x = sde_sample(velocity_fn, path, rng, x, ts=time_grid(num_steps, t_hi, t_lo),
                       diffusion_form=diffusion_form, diffusion_norm=diffusion_norm,
                       last_step=last_step, cond=cond)
    else:
        sampler = {"flow_euler": euler_sample, "flow_heun": heun_sample}[method]
        x = sampler(velocity_fn, x, ts=time_grid(num_steps + 1, t_hi, t_lo), cond=cond)
    return x, jnp.asarray(nfe(method, num_steps, last_step))
