"""Classifier-free guidance (Ho & Salimans 2022) on a conditional denoiser D(x, sigma, cond).

D_w(x, sigma, c) = D(x, sigma, c_u) + w (D(x, sigma, c) - D(x, sigma, c_u)), where c_u is the null
condition (unconditional model) or a negative condition. Both branches run as one batched call of
size 2B. Guidance can be limited to an interval of noise levels (Kynkaenniemi et al. 2024,
Eq. 2): outside [sigma_lo, sigma_hi] D_w is the conditional denoiser. Conditions are arrays or
pytrees of arrays with a leading batch axis (labels, or e.g. {'label': ..., 'drop': ...}).

The same combination guides a noise prediction or a score: eps = (x - D) / sigma and
score = (D - x) / sigma^2 are affine in D with coefficients of (x, sigma) alone, and the weights
1 - w and w sum to one, so eps_w = eps_u + w (eps_c - eps_u) and s_w = s_u + w (s_c - s_u)
(Ho & Salimans 2022, Eq. 6, whose w is our w - 1). `guide` applies it to the function a
method's samplers call.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax import text
from diffusion_jax.denoisers import Denoiser, expand, per_example


def _broadcast_like(value, like):
    return jax.tree.map(lambda v, c: jnp.broadcast_to(jnp.asarray(v, c.dtype), c.shape), value, like)


def classifier_free_guidance(denoiser: Denoiser, scale: float, null_cond, *,
                             negative_cond=None, sigma_lo: float = 0.0,
                             sigma_hi: float = math.inf,
                             sigma_of: Callable = lambda level: level,
                             channels: int = 0) -> Denoiser:
    """The guided denoiser D_w(x, sigma, cond) with guidance scale w = `scale`.

    `null_cond` (same pytree structure as cond, scalars broadcast over the batch) selects the
    unconditional branch; `negative_cond`, when given, replaces it (negative prompting).
    With a finite interval, examples whose sigma lies outside it get D(x, sigma, cond); the
    batched pair of evaluations is skipped (lax.cond) when no example of the batch needs it.
    `sigma_of` maps the function's second argument to the EDM sigma the interval is stated in
    (identity for a denoiser; e.g. the sigma of a DDPM timestep or of an SDE time).
    `channels` > 0 guides only the first `channels` output channels and keeps the conditional
    output on the others (DiT's and SiT's `forward_with_cfg`: 3 of the 4 latent channels).
    """
    uncond_value = null_cond if negative_cond is None else negative_cond
    limited = sigma_lo > 0.0 or sigma_hi < math.inf

    def pair(x, sigma, cond):
        uncond = _broadcast_like(uncond_value, cond)
        both = lambda a, b: jnp.concatenate([a, b], axis=0)
        out = denoiser(both(x, x), both(sigma, sigma), jax.tree.map(both, cond, uncond))
        return jnp.split(out, 2, axis=0)

    def combine(d_cond, d_uncond):
        guided = d_uncond + scale * (d_cond - d_uncond)
        if not channels:
            return guided
        return jnp.concatenate([guided[..., :channels], d_cond[..., channels:]], axis=-1)

    def guided_denoiser(x, sigma, cond):
        sigma = per_example(sigma, x)
        if not limited:
            return combine(*pair(x, sigma, cond))
        level = sigma_of(sigma)
        inside = (level >= sigma_lo) & (level <= sigma_hi)

        def with_guidance():
            d_cond, d_uncond = pair(x, sigma, cond)
            return jnp.where(expand(inside, x), combine(d_cond, d_uncond), d_cond)
        return jax.lax.cond(jnp.any(inside), with_guidance, lambda: denoiser(x, sigma, cond))
    return guided_denoiser


def autoguidance(main: Denoiser, guide: Denoiser, scale: float, *, sigma_lo: float = 0.0,
                 sigma_hi: float = math.inf) -> Denoiser:
    """D_w(x, sigma, cond) = D_guide + w (D_main - D_guide) with w = `scale` (Karras et al. 2024,
    Eq. 1 and Sec. 3; EDM2's `edm_sampler.denoise`, `ref_Dx.lerp(Dx, guidance)`), `guide` a
    weaker model of the same data (smaller and/or shorter-trained; the unconditional model makes
    this classifier-free guidance). Both are denoisers called as `main` is (`cond` passed when
    not None). Limited to the interval as `classifier_free_guidance` is (Kynkaenniemi et al.
    2024): outside [sigma_lo, sigma_hi] D_w = D_main, and the guide is not evaluated when no
    example of the batch lies inside. Scale 1 is `main` itself. Unlike CFG's one batched 2B
    call, the two networks differ, so they are two calls."""
    if scale == 1.0:
        return main
    limited = sigma_lo > 0.0 or sigma_hi < math.inf

    def guided_denoiser(x, sigma, cond=None):
        call = lambda D: D(x, sigma) if cond is None else D(x, sigma, cond)  # noqa: E731
        d_main = call(main)

        def combine():
            d_guide = call(guide)
            return d_guide + scale * (d_main - d_guide)
        if not limited:
            return combine()
        level = per_example(sigma, x)
        inside = (level >= sigma_lo) & (level <= sigma_hi)
        return jax.lax.cond(jnp.any(inside),
                            lambda: jnp.where(expand(inside, x), combine(), d_main),
                            lambda: d_main)
    return guided_denoiser


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance with scale w (1: none), only for EDM sigma in [sigma_lo, sigma_hi],
    away from the null label or caption, or from `negative_label` (>= 0) / `negative_prompt`
    (non-empty), on the first `channels` output channels (0: all): the sampling options
    `guidance_scale`, `guidance_sigma_lo` / `_hi`, `negative_label`, `negative_prompt`,
    `guidance_channels` (`samplers.sampler.Sampler.guidance`)."""

    scale: float = 1.0
    sigma_lo: float = 0.0
    sigma_hi: float = math.inf
    negative_label: int = -1
    negative_prompt: str = ""
    channels: int = 0


def guide(fn: Callable, cond, num_classes: int, caption_length: int, guidance: Guidance,
          sigma_of: Callable = lambda level: level, uncond=None) -> Callable:
    """fn(x, level, cond) guided as `guidance` says: the one combination that EDM (its denoiser),
    DDPM (its network prediction) and score SDEs (their score) apply.

    Scale w == 1 returns `fn` itself (the unguided program, no 2B batch). Otherwise
    `classifier_free_guidance` from the null label `num_classes`, or the negative label when >= 0;
    a caption-conditional model (caption_length > 0) from the empty caption, or from the negative
    prompt when it is not empty; only where the EDM sigma `sigma_of(level)` (default: the level
    itself) lies in [sigma_lo, sigma_hi]. `uncond`, when given, is the unconditional branch's
    condition as the caller computed it (e.g. a frozen text encoder's embedding of the negative
    or the empty prompt; same pytree as `cond`, leading axes broadcast) and replaces the null and
    negative conditions. `cond` is the condition the samplers will pass: guidance needs one,
    and a conditional model.
    """
    if guidance.scale == 1.0:
        return fn
    if cond is None or (uncond is None and not (num_classes or caption_length)):
        raise ValueError("guidance_scale != 1 needs a conditional model and conditions")
    if uncond is not None:
        null, negative = uncond, None
    else:
        null = null_condition(num_classes, caption_length)
        negative = None if guidance.negative_label < 0 else guidance.negative_label
        if caption_length:
            negative = (text.tokenize(guidance.negative_prompt, caption_length)
                        if guidance.negative_prompt else None)
    return classifier_free_guidance(
        fn, guidance.scale, null, negative_cond=negative, sigma_lo=guidance.sigma_lo,
        sigma_hi=guidance.sigma_hi, sigma_of=sigma_of, channels=guidance.channels)


def drop_labels(rng: jax.Array, labels: jax.Array, p: float, null_label) -> jax.Array:
    """Training-time condition dropout: each label becomes `null_label` with probability p."""
    drop = jax.random.bernoulli(rng, p, labels.shape[:1])
    return jnp.where(expand(drop, labels), jnp.asarray(null_label, labels.dtype), labels)


def example_condition(num_classes: int, caption_length: int = 0, batch: int = 1):
    """A condition of the right shape for initialising a network: (batch,) labels,
    (batch, caption_length) caption tokens, or None for an unconditional model."""
    if caption_length:
        return jnp.zeros((batch, caption_length), jnp.int32)
    return jnp.zeros((batch,), jnp.int32) if num_classes else None


def null_condition(num_classes: int, caption_length: int = 0):
    """The unconditional branch: the null label `num_classes`, or for captions the empty caption
    (every token PAD = 0, `diffusion_jax.text`), broadcast over the condition's shape."""
    return 0 if caption_length else num_classes
