"""DiT: a diffusion transformer with adaLN-Zero conditioning (Peebles & Xie 2023).

The image (B, H, W, C) is cut into p x p patches, each linearly embedded, plus fixed 2-D
sine-cosine position embeddings (not parameters). The condition c is the timestep embedding
(256-dim sinusoid -> MLP) plus the label embedding (a table with one extra row, the null label
num_classes), the embedding of h = t - r (MeanFlow, Geng et al. 2025: a second timestep
embedder) and, with `cross_attention`, the pooled context. Each block regresses shift, scale
and gate of its two LayerNorms (no affine, eps 1e-6) from SiLU(c) (Sec. 3.2, adaLN-Zero: the
regression starts at zero, so every block starts as the identity); x += gate Attn(LN(x)(1 +
scale) + shift), likewise for the GELU (tanh) MLP. With `cross_attention` the block also attends
to the context {"context": (B, L, D), "mask": (B, L)} between self-attention and MLP (as
PixArt-alpha does for text). A final adaptive LayerNorm and a zero-initialised linear layer give
p x p x out_channels per patch, reassembled to the image; `learn_sigma` doubles out_channels
(DiT's learned variance; SiT keeps the layer and drops the second half).

Parameter names follow the official `models.py` (`x_embedder`, `t_embedder/mlp_0`,
`blocks_3/attn/qkv`, `final_layer/linear`, ...), so `diffusion_jax.importers.dit` maps its
state dict one to one. Presets: `DiT-{S,B,L,XL}/{2,4,8}` of the paper (Table 1) and
MeanFlow's `DiT-M/*`.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.errors import ConfigError, choose
from diffusion_jax.models.attention import Attention, masked_mean
from diffusion_jax.models.layers import rematerialized

Dtype = Any

SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "M": (16, 1024, 16), "L": (24, 1024, 16),
         "XL": (28, 1152, 16)}
"""(depth, hidden_size, num_heads) of DiT's sizes (Peebles & Xie 2023, Table 1); M is MeanFlow's."""
PRESETS = {f"DiT-{size}/{p}": dict(depth=d, hidden_size=w, num_heads=h, patch_size=p)
           for size, (d, w, h) in SIZES.items() for p in (2, 4, 8)}
SMALL = dict(depth=4, hidden_size=128, num_heads=4, patch_size=2)
"""The architecture of a DiT without a preset."""

xavier_uniform = nn.initializers.xavier_uniform()
PATCH_INITS = {"linear": nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
               "conv": nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")}
"""The patch embedding's initialiser: 'linear' is DiT's `initialize_weights` (Xavier of the
p p C -> D linear map it is); 'conv' counts the p x p window in both fans (fan_out p p D), so
it starts sqrt((p p C + p p D) / (p p C + D)) times smaller: at small widths (4x4x3 patches,
width 64) DiT's init drowns the fixed position embedding (unit scale): configs/text/shapes_dit.py
learned no positions with it (position accuracy 0.26 against 1.00 with 'conv')."""
embedding_init = nn.initializers.normal(0.02)
zeros = nn.initializers.zeros


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
    """(h w, dim) fixed position embeddings in token (row-major) order: sin/cos of the column in
    the first half of the channels, of the row in the second (MAE's `get_2d_sincos_pos_embed`,
    which DiT uses: its meshgrid puts w first); frequencies 10000^(-k / (dim / 4))."""
    def one_axis(pos, d):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    return np.concatenate([one_axis(cols, dim // 2), one_axis(rows, dim // 2)], 1).astype(
        np.float32)


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """(B, dim) [cos(t f_k), sin(t f_k)] with f_k = max_period^(-k / (dim / 2)), k < dim / 2
    (GLIDE's `timestep_embedding`, which DiT, SiT and MeanFlow use), in float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def modulate(x, shift, scale):
    """x (1 + scale) + shift with (B, D) shift and scale over the tokens of x (B, N, D)."""
    return x * (1.0 + scale[:, None]) + shift[:, None]


def layer_norm(dtype: Dtype, name: Optional[str] = None) -> nn.LayerNorm:
    """LayerNorm without affine parameters, eps 1e-6 (DiT's norm1, norm2, norm_final)."""
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, name=name)


class TimestepEmbedder(nn.Module):
    """Linear(256, D) -> SiLU -> Linear(D, D) of `timestep_embedding(t)`; weights N(0, 0.02^2)."""

    hidden_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t):
        dense = lambda name: nn.Dense(self.hidden_size, dtype=self.dtype,  # noqa: E731
                                      kernel_init=embedding_init, name=name)
        return dense("mlp_2")(nn.silu(dense("mlp_0")(timestep_embedding(t))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and biases (timm's `Attention`, as
    DiT has it), through `jax.nn.dot_product_attention` with the XLA implementation, which
    `jax.jvp` differentiates (MeanFlow's and sCM's targets; fused kernels have no JVP)."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=xavier_uniform, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads)
        h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                         implementation="xla")
        return nn.Dense(d, dtype=self.dtype, kernel_init=xavier_uniform, name="proj")(
            h.reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block: x += gate_msa Attn(modulate(LN x)); [x += CrossAttn(LN x, context)];
    x += gate_mlp MLP(modulate(LN x)), the six modulations from Linear(SiLU c) (zero init)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c, context=None, mask=None):
        d = x.shape[-1]
        mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=zeros, name="adaLN_modulation")(
            nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, -1)
        x = x + gate_msa[:, None] * SelfAttention(self.num_heads, self.dtype, name="attn")(
            modulate(layer_norm(self.dtype, "norm1")(x), shift_msa, scale_msa))
        if context is not None:
            x = x + Attention(self.num_heads, self.dtype, name="cross_attn")(
                nn.LayerNorm(dtype=self.dtype, name="norm_cross")(x), context.astype(self.dtype),
                mask)
        h = modulate(layer_norm(self.dtype, "norm2")(x), shift_mlp, scale_mlp)
        h = Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(h)
        return x + gate_mlp[:, None] * h


class Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2 (timm's `Mlp`)."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=xavier_uniform, name="fc1")(x)
        return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=xavier_uniform, name="fc2")(
            nn.gelu(h, approximate=True))


class FinalLayer(nn.Module):
    """modulate(LN x, shift, scale) -> Linear(D, p p out_channels); both linears start at zero."""

    patch_size: int
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        d, p = x.shape[-1], self.patch_size
        shift, scale = jnp.split(nn.Dense(2 * d, dtype=self.dtype, kernel_init=zeros,
                                          name="adaLN_modulation")(nn.silu(c)), 2, axis=-1)
        x = modulate(layer_norm(self.dtype, "norm_final")(x), shift, scale)
        return nn.Dense(p * p * self.out_channels, dtype=self.dtype, kernel_init=zeros,
                        name="linear")(x)


class DiT(nn.Module):
    """`__call__(x, t, cond, train, h=None)`: x NHWC with H, W divisible by the patch size, t (B,)
    noise conditioning, cond (B,) labels (num_classes > 0; label num_classes is the null label)
    or a context dict (cross_attention); h (B,) the interval t - r of an `h_embedding` network
    (None: h = 0, MeanFlow's instantaneous velocity u(z, t, t)). Output (B, H, W, out_channels)
    float32, out_channels = `out_channels` or C, twice that with `learn_sigma`.

    `preset` (e.g. 'DiT-XL/2', see PRESETS) sets depth, hidden_size, num_heads and patch_size;
    those left as None come from the preset, or from SMALL without one. `patch_init` is a key of
    PATCH_INITS. `remat` recomputes each block's activations in the backward pass (same
    parameters and outputs). Label dropout for classifier-free guidance is the method's (it
    passes the null label), not the network's."""

    preset: str = ""
    patch_size: Optional[int] = None
    hidden_size: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: float = 4.0
    num_classes: int = 0
    learn_sigma: bool = False
    h_embedding: bool = False
    cross_attention: bool = False
    out_channels: Optional[int] = None
    patch_init: str = "linear"
    remat: bool = False
    dtype: Dtype = jnp.float32

    def __post_init__(self):
        self.architecture()
        super().__post_init__()

    def architecture(self) -> dict:
        """depth, hidden_size, num_heads, patch_size: the preset's or SMALL's, where not given;
        ConfigError for an unknown preset or patch_init, or a value that contradicts the preset."""
        choose("patch init (model.patch_init)", self.patch_init, PATCH_INITS)
        if self.preset and self.preset not in PRESETS:
            raise ConfigError(f"unknown DiT preset (model.preset) {self.preset!r}; valid: "
                              f"{', '.join(PRESETS)}")
        base = PRESETS[self.preset] if self.preset else SMALL
        given = {k: getattr(self, k) for k in base if getattr(self, k) is not None}
        if self.preset:
            for key, value in given.items():
                if value != base[key]:
                    raise ConfigError(f"model.{key}={value} contradicts model.preset="
                                      f"{self.preset!r} ({key} {base[key]}); leave it unset")
        return {**base, **given}

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False, h=None):
        arch = self.architecture()
        b, hgt, wid, ch = x.shape
        p, d = arch["patch_size"], arch["hidden_size"]
        out_ch = (self.out_channels or ch) * (2 if self.learn_sigma else 1)
        if hgt % p or wid % p:
            raise ValueError(f"image {hgt}x{wid} is not divisible into {p}x{p} patches")
        tokens = nn.Conv(d, (p, p), strides=(p, p), dtype=self.dtype,
                         kernel_init=PATCH_INITS[self.patch_init], name="x_embedder")(
            x.astype(self.dtype))
        gh, gw = hgt // p, wid // p
        tokens = tokens.reshape(b, gh * gw, d) + jnp.asarray(sincos_2d(gh, gw, d), self.dtype)

        c = TimestepEmbedder(d, self.dtype, name="t_embedder")(t)
        if self.h_embedding:
            h = jnp.zeros((b,), jnp.float32) if h is None else h
            c = c + TimestepEmbedder(d, self.dtype, name="h_embedder")(h)
        elif h is not None:
            raise ValueError("h = t - r needs a DiT with h_embedding=True")
        context = mask = None
        if self.num_classes > 0:
            if cond is None:
                cond = jnp.full((b,), self.num_classes, jnp.int32)
            c = c + nn.Embed(self.num_classes + 1, d, embedding_init=embedding_init,
                             name="y_embedder")(cond).astype(self.dtype)
        if self.cross_attention:
            if cond is None:
                raise ValueError("a cross-attention DiT needs a context {'context', 'mask'}")
            context, mask = cond["context"], cond["mask"]
            c = c + nn.Dense(d, dtype=self.dtype, kernel_init=xavier_uniform,
                             name="context_embedder")(masked_mean(context, mask))
        block = rematerialized(DiTBlock, self.remat, static_argnums=())
        for i in range(arch["depth"]):
            tokens = block(arch["num_heads"], self.mlp_ratio, self.dtype, name=f"blocks_{i}")(
                tokens, c, context, mask)
        out = FinalLayer(p, out_ch, self.dtype, name="final_layer")(tokens, c)
        out = out.reshape(b, gh, gw, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5)
        return out.reshape(b, hgt, wid, out_ch).astype(jnp.float32)
