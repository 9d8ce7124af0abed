"""CLIP's text transformer (Radford et al. 2021, Sec. 2.4), as transformers' `CLIPTextModel`
runs it, so that Stable Diffusion's text encoders load into it: OpenAI CLIP ViT-L/14's for SD
1.x (12 layers, width 768, quick_gelu; 123,060,480 parameters) and OpenCLIP ViT-H/14's for SD
2.x (width 1024, gelu).

Token embedding plus learned position embedding, `num_layers` pre-LN blocks x + Attn(LN x)
with a causal mask, x + MLP(LN x), a final LayerNorm (all LayerNorms eps `layer_norm_eps`).
The pooled output is the final-normalised state at the end-of-text token: the first position
holding `eos_token_id`, or, for configs written before transformers fixed that id (those with
`eos_token_id` 2, as SD's are), the position of the largest token id, which is the same
position for CLIP's vocabulary.

SD 2 conditions on the penultimate layer of OpenCLIP's 24 followed by the final LayerNorm: the
released diffusers text encoder simply has the 23 layers (`num_hidden_layers` 23), so its last
hidden state is that, and the single-file importer drops the 24th layer. `clip_skip` k > 0 is
what diffusers' `encode_prompt(clip_skip=k)` feeds a U-Net instead: the final LayerNorm of the
hidden state k layers before the last.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError
from diffusion_jax.models.layers import rematerialized
from diffusion_jax.models.ldm_layers import MultiHeadAttention

Dtype = Any

ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": lambda x: nn.gelu(x, approximate=False)}
"""transformers' `hidden_act` names: quick_gelu x sigmoid(1.702 x) (OpenAI CLIP), exact gelu."""


@flax.struct.dataclass
class CLIPTextOutput:
    context: jax.Array  # (B, L, width): the final LayerNorm of hidden_states[-1 - clip_skip]
    hidden_states: tuple  # num_layers + 1 of (B, L, width): the embeddings, then every layer
    pooled: jax.Array  # (B, width): the final-normalised last layer at the end-of-text token


class EncoderLayer(nn.Module):
    num_heads: int
    mlp_dim: int
    activation: str
    eps: float
    dtype: Dtype = jnp.float32
    causal: bool = True  # the text tower's mask; CLIP's image tower attends everywhere

    @nn.compact
    def __call__(self, x, mask=None):
        norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)  # noqa: E731
        x = x + MultiHeadAttention(self.num_heads, use_bias=True, causal=self.causal, dtype=self.dtype,
                                   name="attn")(norm("norm1")(x), mask=mask)
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(norm("norm2")(x))
        return x + nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(
            ACTIVATIONS[self.activation](h))


class CLIPTextEncoder(nn.Module):
    """`__call__(tokens, mask=None, clip_skip=0)` with tokens (B, L <= max_length) int ids (from
    `tokenizer.CLIPTokenizer`), `mask` (B, L) True = a real token (SD's pipelines pass none, so
    padding is attended to, causally) -> `CLIPTextOutput`, float32.

    Parameters: `token_embedding`, `position_embedding` (max_length, width),
    `layer_<i>/{norm1, attn/{q, k, v, out}, norm2, fc1, fc2}`, `final_norm`."""

    vocab_size: int = 49408
    width: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_length: int = 77
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, tokens, mask: Optional[jax.Array] = None, clip_skip: int = 0):
        tokens = jnp.asarray(tokens, jnp.int32)
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"CLIP text sequences are at most {self.max_length} tokens, got "
                             f"{tokens.shape[1]}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: "
                             f"{', '.join(sorted(ACTIVATIONS))}")
        position = self.param("position_embedding", nn.initializers.normal(0.01),
                              (self.max_length, self.width))
        h = nn.Embed(self.vocab_size, self.width, name="token_embedding")(tokens)
        h = (h + position[:tokens.shape[1]]).astype(self.dtype)
        layer = rematerialized(EncoderLayer, self.remat, static_argnums=())
        hidden = [h]
        for i in range(self.num_layers):
            h = layer(self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps,
                      self.dtype, name=f"layer_{i}")(h, mask)
            hidden.append(h)
        final_norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="final_norm")
        last = final_norm(h).astype(jnp.float32)
        context = last if clip_skip == 0 else final_norm(hidden[-1 - clip_skip]).astype(jnp.float32)
        if self.eos_token_id == 2:
            eos = jnp.argmax(tokens, axis=-1)
        else:
            eos = jnp.argmax(tokens == self.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(last, eos[:, None, None], axis=1)[:, 0]
        return CLIPTextOutput(context, tuple(x.astype(jnp.float32) for x in hidden), pooled)


def text_encoder_config(config: dict) -> dict:
    """`CLIPTextEncoder` keyword arguments of a transformers `CLIPTextModel` config.json."""
    activation = config.get("hidden_act", "quick_gelu")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"text encoder hidden_act {activation!r}; valid: "
                          f"{', '.join(sorted(ACTIVATIONS))}")
    return dict(vocab_size=config.get("vocab_size", 49408),
                width=config.get("hidden_size", 512),
                num_layers=config.get("num_hidden_layers", 12),
                num_heads=config.get("num_attention_heads", 8),
                mlp_dim=config.get("intermediate_size", 2048),
                max_length=config.get("max_position_embeddings", 77), activation=activation,
                layer_norm_eps=config.get("layer_norm_eps", 1e-5),
                eos_token_id=config.get("eos_token_id", 49407))


# our parameter paths -> transformers CLIPTextModel keys (`weight_files.params_from_state_dict`)
TEXT_RULES = (
    (r"^token_embedding/embedding$", "embeddings/token_embedding/weight"),
    (r"^position_embedding$", "embeddings/position_embedding/weight"),
    (r"^layer_(\d+)/", r"encoder/layers/\1/"),
    (r"/norm([12])/", r"/layer_norm\1/"),
    (r"/attn/(q|k|v)/", r"/self_attn/\1_proj/"),
    (r"/attn/out/", "/self_attn/out_proj/"),
    (r"/(fc[12])/", r"/mlp/\1/"),
    (r"^final_norm/", "final_layer_norm/"),
)
