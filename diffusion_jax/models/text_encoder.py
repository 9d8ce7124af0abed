"""Text encoders: caption tokens (B, L) -> a context sequence (B, L', D) and its mask, and the
wrapper that conditions any backbone on captions.

`ByteTextEncoder` is a small transformer over byte tokens trained jointly with the diffusion
model. `PrecomputedTextEncoder` looks each caption up in a file of embeddings made elsewhere
(CLIP, T5, ...). Both put a learned slot first in the context, always valid: the empty caption
(the null condition of guidance) is that slot alone, and attention never sees an all-masked row.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffusion_jax import text
from diffusion_jax.errors import ConfigError
from diffusion_jax.models.attention import TransformerBlock

Dtype = Any


def _with_null_slot(module: nn.Module, context, mask):
    """Prepend the learned always-valid slot to a (B, L, D) context and its (B, L) mask."""
    b, _, d = context.shape
    slot = module.param("null_slot", nn.initializers.normal(0.02), (1, 1, d))
    context = jnp.concatenate([jnp.broadcast_to(slot, (b, 1, d)).astype(context.dtype), context], 1)
    return context, jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)


class ByteTextEncoder(nn.Module):
    """Token + learned position embeddings, `num_layers` pre-LN transformer blocks with padded
    tokens masked, final LayerNorm. Returns (context (B, L + 1, width) float32, mask (B, L + 1))."""

    width: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        tokens = jnp.asarray(tokens, jnp.int32)
        mask = tokens != text.PAD
        h = nn.Embed(text.VOCAB_SIZE, self.width, name="token_embed")(tokens)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_length, self.width))
        h, mask = _with_null_slot(self, (h + pos[:tokens.shape[1]]).astype(self.dtype), mask)
        for i in range(self.num_layers):
            h = TransformerBlock(self.num_heads, dtype=self.dtype, name=f"block{i}")(h, x_mask=mask)
        return nn.LayerNorm(dtype=self.dtype, name="norm_out")(h).astype(jnp.float32), mask


@functools.lru_cache(maxsize=8)
def load_embedding_table(path: str, length: int):
    """(caption tokens (K, length), embeddings (K, L', D) float32, mask (K, L') bool) of an
    `.npz` with `captions` (K,) strings and `embeddings` (K, D) or (K, L', D), optionally
    `mask` (K, L'); one-line ConfigError when it is missing or malformed."""
    if not os.path.exists(path):
        raise ConfigError(f"text embeddings file {path!r} does not exist")
    with np.load(path, allow_pickle=False) as f:
        if "captions" not in f or "embeddings" not in f:
            raise ConfigError(f"text embeddings file {path!r} needs arrays 'captions' and "
                              f"'embeddings'; it has {', '.join(f.files)}")
        captions, emb = [str(c) for c in f["captions"]], np.asarray(f["embeddings"], np.float32)
        emb = emb[:, None] if emb.ndim == 2 else emb
        mask = np.asarray(f["mask"], bool) if "mask" in f else np.ones(emb.shape[:2], bool)
    if emb.ndim != 3 or len(emb) != len(captions) or mask.shape != emb.shape[:2]:
        raise ConfigError(f"text embeddings file {path!r}: embeddings {emb.shape} and mask "
                          f"{mask.shape} do not match {len(captions)} captions")
    tokens = text.tokenize_all(captions, length)
    if len({t.tobytes() for t in tokens}) != len(tokens):
        raise ConfigError(f"text embeddings file {path!r}: captions repeat (after truncation to "
                          f"{length} bytes)")
    return tokens, emb, mask


class PrecomputedTextEncoder(nn.Module):
    """Looks up each caption's embedding in the file `file` (`load_embedding_table`) and projects
    it to `width`. A caption not in the file (and the empty caption) gets only the null slot.
    Returns (context (B, L' + 1, width) float32, mask (B, L' + 1))."""

    file: str
    width: int = 64
    max_length: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        keys, table, table_mask = load_embedding_table(self.file, self.max_length)
        tokens = jnp.asarray(tokens, jnp.int32)
        match = jnp.all(tokens[:, None, :] == jnp.asarray(keys)[None], axis=-1)  # (B, K)
        index, found = jnp.argmax(match, axis=1), jnp.any(match, axis=1)
        context = jnp.asarray(table)[index]
        mask = jnp.asarray(table_mask)[index] & found[:, None]
        h = nn.Dense(self.width, dtype=self.dtype, name="proj")(context)
        context, mask = _with_null_slot(self, h, mask)
        return context.astype(jnp.float32), mask


class TextConditioned(nn.Module):
    """`backbone(x, t, {"context", "mask"}, train)` conditioned on caption tokens `cond`
    (B, caption_length) through `encoder`; cond None means the empty caption."""

    backbone: nn.Module
    encoder: nn.Module
    caption_length: int = 32

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False):
        if cond is None:
            cond = jnp.full((x.shape[0], self.caption_length), text.PAD, jnp.int32)
        context, mask = self.encoder(cond)
        return self.backbone(x, t, {"context": context, "mask": mask}, train)
