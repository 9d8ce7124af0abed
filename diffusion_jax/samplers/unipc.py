"""UniPC (Zhao et al. 2023): the multistep predictor UniP-p and corrector UniC-p on a denoiser.

In the EDM convention (alpha = 1, lambda = -log sigma, h = lambda_t - lambda_s) with model
output m = D (data prediction, hh = -h) or m = eps = (x - D) / sigma (noise prediction, hh = h),
one step from s = sigma_i to t = sigma_{i+1} of order p is
    x_t = a x_s - c (e^hh - 1) m_s - c B(h) sum_k rho_k D1_k,   D1_k = (m_{s_k} - m_s) / r_k,
with a = sigma_t / sigma_s, c = 1 (data) or a = 1, c = sigma_t (noise), r_k = (lambda_{s_k} -
lambda_s) / h for the earlier points s_k, and B(h) = hh ('bh1') or e^hh - 1 ('bh2'). The
predictor's rho solve R_{p-1} rho = b over the p - 1 earlier points (rho = 1/2 at p = 2); the
corrector adds the model output at the predicted point as r = 1 and solves R_p rho = b (rho = 1/2
at p = 1), where R_p = (r_k^j) and b_j = j! hh phi_{j+1}(hh) / B(h) with phi_{j+1} the
exponential-integrator functions. The corrector re-uses the evaluation at the predicted point,
so one network evaluation per step; the corrected point is where the next predictor starts,
the model output stays the one at the predicted point, and the last step is not corrected.
A step onto sigma = 0 is x = D at the last evaluated point.

Options follow diffusers' `UniPCMultistepScheduler` and its defaults: solver_order 2,
solver_type 'bh2', predict_x0 (prediction 'data'), lower_order_final (order min(p, N - i) at
step i of N), disable_corrector (step indices whose correction is skipped); not supported:
solver_p, thresholding.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.samplers.common import one_evaluation_per_step, start

VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")


def _b_vector(hh, B_h, p):
    """b_j = j! hh phi_{j+1}(hh) / B(h), j = 1..p, by phi_{j+1} = (phi_j - 1/j!) / hh."""
    g, factorial, out = jnp.expm1(hh) / hh - 1.0, 1.0, []
    for j in range(1, p + 1):
        out.append(g * factorial / B_h)
        factorial *= j + 1
        g = g / hh - 1.0 / factorial
    return jnp.stack(out)


def _update(x, m_s, earlier_ms, sigma_s, earlier_sigmas, sigma_t, p, variant, prediction,
            m_t=None):
    """UniP-p from sigma_s to sigma_t > 0, or with `m_t` (the model output at the predicted x_t)
    UniC-p; earlier_ms[k] is the model output at earlier_sigmas[k], the (k + 1)-th point before s."""
    lam_s = -jnp.log(sigma_s)
    h = -jnp.log(sigma_t) - lam_s
    hh = -h if prediction == "data" else h
    B_h = hh if variant == "bh1" else jnp.expm1(hh)
    if prediction == "data":
        a, c = sigma_t / sigma_s, 1.0
    else:
        a, c = 1.0, sigma_t
    x_t = a * x - c * jnp.expm1(hh) * m_s
    r = [(-jnp.log(earlier_sigmas[k]) - lam_s) / h for k in range(p - 1)]
    D1 = [(earlier_ms[k] - m_s) / r[k] for k in range(p - 1)]
    if m_t is not None:
        r.append(jnp.ones_like(h))
        D1.append(m_t - m_s)
    if not D1:
        return x_t
    if len(D1) == 1:
        rho = [0.5]
    else:
        R = jnp.stack([jnp.stack(r) ** j for j in range(len(r))])
        rho = jnp.linalg.solve(R, _b_vector(hh, B_h, len(r)))
        rho = [rho[k] for k in range(len(r))]
    return x_t - c * B_h * sum(rho_k * d for rho_k, d in zip(rho, D1))


def unipc_orders(num_steps: int, order: int, lower_order_final: bool) -> np.ndarray:
    """The order of step i: min(order, i + 1), and min(., N - i) with lower_order_final (diffusers'
    UniPC rule, for any number of steps)."""
    i = np.arange(num_steps)
    orders = np.minimum(order, i + 1)
    return np.minimum(orders, num_steps - i) if lower_order_final else orders


def unipc_sample(denoiser: Callable, rng: jax.Array, shape, *, sigmas: jax.Array,
                 x_init: Optional[jax.Array] = None, cond=None, order: int = 2,
                 variant: str = "bh2", prediction: str = "data", lower_order_final: bool = True,
                 disable_corrector: Sequence[int] = ()) -> jax.Array:
    """UniPC of `order` (1-3; UniPC-p with its corrector is of order p + 1) over the grid `sigmas`.

    `disable_corrector`: steps i whose result is not corrected (diffusers counts the same way:
    index i skips the correction of x_{i+1}). One evaluation per step (`unipc_nfe`).
    """
    if order not in (1, 2, 3):
        raise ConfigError(f"UniPC order must be 1, 2 or 3, got {order}")
    choose("UniPC variant", variant, VARIANTS)
    choose("UniPC prediction", prediction, PREDICTIONS)
    D, sigmas, x, _ = start(denoiser, rng, shape, sigmas, x_init, cond)
    num_steps = sigmas.shape[0] - 1
    orders = jnp.asarray(unipc_orders(num_steps, order, lower_order_final))
    skipped = set(disable_corrector)
    corrected = jnp.asarray([i > 0 and i - 1 not in skipped for i in range(num_steps)])

    def model(x, sigma):
        denoised = D(x, sigma)
        return denoised if prediction == "data" else (x - denoised) / sigma

    def earlier(i):
        return sigmas[jnp.maximum(i - jnp.arange(1, order), 0)]  # sigma_{i-1}, sigma_{i-2}, ...

    branches = lambda **kw: [functools.partial(_update, p=p, variant=variant,
                                               prediction=prediction, **kw)
                             for p in range(1, order + 1)]

    def body(i, carry):
        x_pred, x_prev, ms = carry  # predicted x_i, corrected x_{i-1}, ms[k] = m_{i-1-k}
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        m = model(x_pred, sigma)
        prev = jnp.maximum(i - 1, 0)
        x = jax.lax.cond(
            corrected[i],
            lambda: jax.lax.switch(orders[prev] - 1, branches(m_t=m), x_prev, ms[0], ms[1:],
                                   sigmas[prev], earlier(prev), sigma),
            lambda: x_pred)
        x_next = jax.lax.cond(
            sigma_next > 0,
            lambda: jax.lax.switch(orders[i] - 1, branches(), x, m, ms, sigma, earlier(i),
                                   sigma_next),
            lambda: m if prediction == "data" else x_pred - sigma * m)
        return x_next, x, jnp.concatenate([m[None], ms[:-1]])

    ms = jnp.zeros((order,) + x.shape, x.dtype)
    x, _, _ = jax.lax.fori_loop(0, num_steps, body, (x, x, ms))
    return x


unipc_nfe = one_evaluation_per_step
