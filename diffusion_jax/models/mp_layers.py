"""Magnitude-preserving layers of EDM2 (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", Sec. 2 and App. B).

Every layer keeps the expected magnitude (the root mean square over the elements, not the
variance) of its output at 1 when its inputs have unit magnitude: weights are normalised in the
forward pass, and the stored weights are re-normalised after each optimiser step by
`force_weight_norm` (forced weight normalisation, Eq. 66), so training cannot grow them.
Layouts are NHWC; a convolution weight is (kh, kw, in, out), a linear one (in, out), the output
channel last. Parameters stay float32; the weights are normalised in float32 and cast to the
compute `dtype`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

MP_WEIGHT = "weight"
"""The name of every magnitude-preserving weight in a parameter tree (`force_weight_norm`)."""

SILU_MAGNITUDE = 0.596
"""sqrt(E[silu(z)^2]) for z ~ N(0, 1) (Eq. 81)."""


def normalize(x: jax.Array, axis=-1, eps: float = 1e-4) -> jax.Array:
    """x / (eps + ||x|| / sqrt(N)), the norm taken over `axis` (N elements): unit root mean
    square over those axes. The norm is computed in float32."""
    axes = tuple(int(a) % x.ndim for a in np.atleast_1d(axis))
    n = math.prod(x.shape[a] for a in axes)
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))
    return x / (eps + norm / math.sqrt(n)).astype(x.dtype)


def normalize_weight(w: jax.Array) -> jax.Array:
    """Each output channel (the last axis) of a weight normalised to unit root mean square, so
    to norm sqrt(fan_in)."""
    return normalize(w, axis=tuple(range(w.ndim - 1)))


def force_weight_norm(params):
    """Forced weight normalisation (Eq. 66): every leaf named `weight` (the weights of `MPConv`)
    replaced by `normalize_weight` of itself, every other leaf (gains) unchanged.

    To be applied to the parameters after each optimiser step. NVlabs/edm2 normalises the
    stored weight at the start of the next forward pass, after its EMA update, so the EMA
    averages the weights as the optimiser left them: the same order is
    optimiser step -> EMA update -> force_weight_norm."""
    def renormalize(path, leaf):
        name = getattr(path[-1], "key", None) if path else None
        return normalize_weight(leaf) if name == MP_WEIGHT else leaf
    return jax.tree_util.tree_map_with_path(renormalize, params)


def mp_weight_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """N(0, 1) weights already normalised per output channel: what NVlabs' first training
    forward pass makes of its N(0, 1) initialisation."""
    return normalize_weight(jax.random.normal(key, shape, dtype))


def mp_silu(x: jax.Array) -> jax.Array:
    """silu(x) / 0.596 (Eq. 81): unit magnitude for x ~ N(0, 1)."""
    return nn.silu(x) / SILU_MAGNITUDE


def mp_sum(a: jax.Array, b: jax.Array, t: float = 0.5) -> jax.Array:
    """((1 - t) a + t b) / sqrt((1 - t)^2 + t^2) (Eq. 88): unit magnitude for independent
    unit-magnitude a and b; t is the weight of b."""
    return (a + t * (b - a)) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: jax.Array, b: jax.Array, t: float = 0.5, axis: int = -1) -> jax.Array:
    """[C (1 - t) / sqrt(Na) a, C t / sqrt(Nb) b] with C = sqrt((Na + Nb) / ((1 - t)^2 + t^2))
    (Eq. 103): unit magnitude, and b holds the share t^2 / ((1 - t)^2 + t^2) of the energy
    whatever the channel counts Na, Nb along `axis`."""
    na, nb = a.shape[axis], b.shape[axis]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return jnp.concatenate([(c * (1 - t) / math.sqrt(na)) * a, (c * t / math.sqrt(nb)) * b],
                           axis=axis)


def pixel_norm(x: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Every pixel's channel vector normalised to unit root mean square (EDM2, Sec. 2.2)."""
    return normalize(x, axis=-1, eps=eps)


def fourier_constants(num_channels: int, seed: int, bandwidth: float = 1.0):
    """The fixed frequencies 2 pi bandwidth f, f ~ N(0, 1), and phases 2 pi phi, phi ~ U(0, 1),
    of `MPFourier` (float32 numpy arrays), drawn from numpy's generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    freqs = 2 * np.pi * bandwidth * rng.standard_normal(num_channels)
    phases = 2 * np.pi * rng.random(num_channels)
    return freqs.astype(np.float32), phases.astype(np.float32)


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features sqrt(2) cos(freqs x + phases) of a (B,) input
    (Eq. 75), computed in float32; (B, num_channels).

    The frequencies and phases are constants, not parameters: `fourier_constants(num_channels,
    seed, bandwidth)`, the same on every host and never trained, averaged or checkpointed.
    A model imported from NVlabs' code, whose buffers torch drew, passes its own as the
    variables `constants/<this module's path>/{freqs, phases}` of `apply`
    (`diffusion_jax.importers.edm2`)."""

    num_channels: int
    seed: int = 0
    bandwidth: float = 1.0

    @nn.compact
    def __call__(self, x):
        if self.has_variable("constants", "freqs"):
            freqs = self.get_variable("constants", "freqs")
            phases = self.get_variable("constants", "phases")
        else:
            freqs, phases = fourier_constants(self.num_channels, self.seed, self.bandwidth)
        y = x.astype(jnp.float32)[:, None] * freqs[None, :] + phases[None, :]
        return math.sqrt(2.0) * jnp.cos(y)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (kernel_size (kh, kw)) or linear layer
    (kernel_size ()), without bias (Eq. 47): the weight normalised per output channel and
    scaled by gain / sqrt(fan_in), so each output channel's effective weight has norm `gain`.
    `same` padding."""

    features: int
    kernel_size: Sequence[int] = ()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, gain=1.0):
        shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        w = self.param(MP_WEIGHT, mp_weight_init, shape)
        fan_in = math.prod(shape[:-1])
        w = (normalize_weight(w) * (gain / math.sqrt(fan_in))).astype(self.dtype)
        x = x.astype(self.dtype)
        if not self.kernel_size:
            return x @ w
        padding = [(k // 2, k // 2) for k in self.kernel_size]
        return jax.lax.conv_general_dilated(x, w, (1,) * len(self.kernel_size), padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cosine_attention(qkv: jax.Array, num_heads: int, eps: float = 1e-4) -> jax.Array:
    """Self-attention over pixels with q, k and v pixel-normalised per head (EDM2, Sec. 2.2,
    "cosine attention"): logits q.k / sqrt(c) = sqrt(c) cos(q, k) are bounded whatever the
    input magnitude. qkv (B, H, W, 3 C) holds, for head h, channel c and j in (q, k, v), the
    channel (h c_head + c) 3 + j, as NVlabs' attn_qkv does; returns (B, H, W, C)."""
    b, hgt, wid, c3 = qkv.shape
    c = c3 // 3
    qkv = normalize(qkv.reshape(b, hgt * wid, num_heads, c // num_heads, 3), axis=3, eps=eps)
    y = jax.nn.dot_product_attention(qkv[..., 0], qkv[..., 1], qkv[..., 2])
    return y.reshape(b, hgt, wid, c)


def clip_activations(x: jax.Array, clip: Optional[float]) -> jax.Array:
    """x clipped to [-clip, clip] (EDM2's blocks clip at 256 against fp16 overflow); None: x."""
    return x if clip is None else jnp.clip(x, -clip, clip)
