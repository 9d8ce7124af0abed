"""CLIP's image tower and the two towers' projections into the joint embedding space (Radford
et al. 2021, Sec. 2.4 and 2.5), as transformers' `CLIPVisionModelWithProjection` and
`CLIPTextModelWithProjection` run them, so a transformers `CLIPModel`'s weights load into them
(`evaluation.clip_score.load_clip_model`).

The image tower is a ViT: a `patch_size` x `patch_size` convolution with stride `patch_size`
(no bias) cuts the (normalised) image into patches, a learned class token is put in front, a
learned position embedding added, then CLIP's extra LayerNorm before the transformer
(`pre_layrnorm`), `num_layers` pre-LN blocks x + Attn(LN x), x + MLP(LN x) attending
everywhere, a LayerNorm of the class token's final state (the pooled output) and the linear
`visual_projection` without bias. The text side is `clip_text.CLIPTextEncoder`'s pooled output
(the end-of-text token) through `text_projection`, likewise without bias.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax.errors import ConfigError
from diffusion_jax.models.clip_text import ACTIVATIONS, CLIPTextEncoder, EncoderLayer

Dtype = Any


@flax.struct.dataclass
class CLIPVisionOutput:
    pooled: jax.Array  # (B, width): post-LayerNorm of the class token's final state
    image_embeds: jax.Array  # (B, projection_dim): visual_projection(pooled)


class CLIPVisionEncoder(nn.Module):
    """`__call__(pixels)` with pixels (B, image_size, image_size, 3) as CLIP's preprocessing
    leaves them (`evaluation.clip_score.preprocess`) -> `CLIPVisionOutput`, float32.

    Parameters: `patch_embedding` (conv kernel), `class_embedding` (width,),
    `position_embedding` (1 + (image_size / patch_size)^2, width), `pre_norm`,
    `layer_<i>/{norm1, attn/{q, k, v, out}, norm2, fc1, fc2}`, `post_norm`,
    `visual_projection`."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    projection_dim: int = 512
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels):
        if pixels.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"CLIP's image tower takes {self.image_size}x{self.image_size} "
                             f"images, got {pixels.shape[1]}x{pixels.shape[2]}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: "
                             f"{', '.join(sorted(ACTIVATIONS))}")
        grid = self.image_size // self.patch_size
        norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,  # noqa: E731
                                         name=name)
        patches = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                          padding="VALID", use_bias=False, dtype=self.dtype,
                          name="patch_embedding")(pixels.astype(self.dtype))
        patches = patches.reshape(len(pixels), grid * grid, self.width)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (self.width,))
        position = self.param("position_embedding", nn.initializers.normal(0.02),
                              (grid * grid + 1, self.width))
        cls = jnp.broadcast_to(cls.astype(self.dtype), (len(pixels), 1, self.width))
        h = jnp.concatenate([cls, patches], axis=1) + position.astype(self.dtype)
        h = norm("pre_norm")(h)
        for i in range(self.num_layers):
            h = EncoderLayer(self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps,
                             self.dtype, causal=False, name=f"layer_{i}")(h)
        pooled = norm("post_norm")(h[:, 0])
        embeds = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype,
                          name="visual_projection")(pooled)
        return CLIPVisionOutput(pooled.astype(jnp.float32), embeds.astype(jnp.float32))


class CLIPTextWithProjection(nn.Module):
    """`__call__(tokens, mask=None) -> (B, projection_dim)` float32: `text_projection` of the
    pooled output of `encoder` (a `CLIPTextEncoder`; its parameters under `encoder`)."""

    encoder: CLIPTextEncoder
    projection_dim: int = 512
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, mask: Optional[jax.Array] = None):
        pooled = self.encoder(tokens, mask).pooled
        return nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype,
                        name="text_projection")(pooled).astype(jnp.float32)


def vision_encoder_config(config: dict, projection_dim: int) -> dict:
    """`CLIPVisionEncoder` keyword arguments of a transformers `CLIPVisionConfig` dict (a
    `CLIPModel` config's `vision_config`) and the model's `projection_dim`."""
    activation = config.get("hidden_act", "quick_gelu")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"vision tower hidden_act {activation!r}; valid: "
                          f"{', '.join(sorted(ACTIVATIONS))}")
    if config.get("num_channels", 3) != 3:
        raise ConfigError(f"vision tower num_channels {config['num_channels']}: need 3 (RGB)")
    return dict(image_size=config.get("image_size", 224), patch_size=config.get("patch_size", 32),
                width=config.get("hidden_size", 768),
                num_layers=config.get("num_hidden_layers", 12),
                num_heads=config.get("num_attention_heads", 12),
                mlp_dim=config.get("intermediate_size", 3072), projection_dim=projection_dim,
                activation=activation, layer_norm_eps=config.get("layer_norm_eps", 1e-5))


# our parameter paths (without visual_projection) -> transformers CLIPVisionTransformer keys
VISION_RULES = (
    (r"^patch_embedding/", "embeddings/patch_embedding/"),
    (r"^class_embedding$", "embeddings/class_embedding"),
    (r"^position_embedding$", "embeddings/position_embedding/weight"),
    (r"^pre_norm/", "pre_layrnorm/"),
    (r"^post_norm/", "post_layernorm/"),
    (r"^layer_(\d+)/", r"encoder/layers/\1/"),
    (r"/norm([12])/", r"/layer_norm\1/"),
    (r"/attn/(q|k|v)/", r"/self_attn/\1_proj/"),
    (r"/attn/out/", "/self_attn/out_proj/"),
    (r"/(fc[12])/", r"/mlp/\1/"),
)
