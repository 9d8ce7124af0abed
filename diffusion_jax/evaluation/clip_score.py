"""CLIP score (Hessel et al. 2021, Sec. 3): how well images match their captions in a CLIP
model's joint embedding space,

    CLIP score = 100 * mean_i max(cos(E_I(x_i), E_T(c_i)), 0),

with E_I, E_T the image and text embeddings (`models.clip_vision`) and c_i the caption image x_i
was sampled for. (Hessel et al. weight by w = 2.5 instead of 100; torchmetrics' `CLIPScore`
uses 100 and clamps the mean, max(100 mean_i cos_i, 0), which is the same number whenever no
cosine is negative, as for a trained CLIP on generated images, whose cosines are ~0.2-0.35.)

The CLIP model is a transformers `CLIPModel` directory (`load_clip_model`): `config.json`,
`model.safetensors`, the tokenizer's `vocab.json` and `merges.txt`, and, where present,
`preprocessor_config.json` (as on the Hugging Face hub, e.g. `openai/clip-vit-large-patch14`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from diffusion_jax.errors import ConfigError
from diffusion_jax.evaluation.features import batched_feature_fn
from diffusion_jax.models.clip_text import TEXT_RULES, CLIPTextEncoder, text_encoder_config
from diffusion_jax.models.clip_vision import (VISION_RULES, CLIPTextWithProjection,
                                              CLIPVisionEncoder, vision_encoder_config)
from diffusion_jax.tokenizer import CLIPTokenizer
from diffusion_jax.weight_files import (abstract_params, params_from_state_dict, read_json,
                                        read_safetensors)

REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """CLIP's image preprocessing (transformers' `CLIPImageProcessor` settings): resize the
    shorter side to `shortest_edge` (bicubic), centre-crop to `crop` x `crop`, scale to [0, 1],
    normalise by `mean` and `std` per channel."""

    shortest_edge: int = 224
    crop: int = 224
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    @classmethod
    def from_config(cls, config: dict, image_size: int) -> "Preprocessing":
        """The settings of a `preprocessor_config.json` dict ({} : CLIP's, at `image_size`)."""
        unsupported = {k: v for k, v in (("do_resize", True), ("do_center_crop", True),
                                         ("do_rescale", True), ("do_normalize", True),
                                         ("resample", 3))
                       if config.get(k, v) != v}
        size = config.get("size", {"shortest_edge": image_size})
        crop = config.get("crop_size", {"height": image_size, "width": image_size})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        if (unsupported or "shortest_edge" not in size or crop["height"] != crop["width"]
                or abs(config.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12):
            raise ConfigError(f"CLIP preprocessor config {config!r}: need a bicubic resize of "
                              f"the shortest edge, a square centre crop, 1/255 rescaling and "
                              f"normalisation")
        return cls(size["shortest_edge"], crop["height"],
                   tuple(config.get("image_mean", CLIP_MEAN)),
                   tuple(config.get("image_std", CLIP_STD)))


def preprocess(images: np.ndarray, settings: Preprocessing) -> np.ndarray:
    """(N, crop, crop, 3) float32 CLIP inputs of (N, H, W, 3) uint8 images, as transformers'
    `CLIPImageProcessorPil` (and transformers 4's `CLIPImageProcessor`, and CLIP's own
    preprocessing) compute them: PIL's bicubic resize of the uint8 image with the shorter side to
    `shortest_edge` (the longer one int(shortest_edge * long / short)), the centre crop at
    ((H' - crop) // 2, (W' - crop) // 2), (v / 255 - mean) / std. transformers 5's default
    `CLIPImageProcessor` resizes with torchvision's antialiased bicubic instead, which differs
    by up to one 8-bit level (0.015 after normalisation, tests/test_clip_score.py)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"CLIP preprocessing takes (N, H, W, 3) uint8 images, got "
                         f"{images.dtype} {images.shape}")
    edge, crop = settings.shortest_edge, settings.crop
    height, width = images.shape[1:3]
    if height <= width:
        size = (int(edge * width / height), edge)  # PIL's (width, height)
    else:
        size = (edge, int(edge * height / width))
    top, left = (size[1] - crop) // 2, (size[0] - crop) // 2
    out = np.stack([np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
                    [top:top + crop, left:left + crop] for image in images])
    mean, std = np.asarray(settings.mean, np.float32), np.asarray(settings.std, np.float32)
    return ((out.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CLIPModel:
    """A CLIP model's two towers with their host float32 parameters
    (`params["vision"]`, `params["text"]`), its preprocessing and tokenizer."""

    vision: CLIPVisionEncoder
    text: CLIPTextWithProjection
    params: dict
    preprocessing: Preprocessing
    tokenizer: CLIPTokenizer


def clip_params(state_dict: dict, vision: CLIPVisionEncoder, text: CLIPTextWithProjection
                ) -> dict:
    """{"vision", "text"} parameters of a transformers `CLIPModel` state dict (`vision_model.*`
    and `visual_projection`, `text_model.*` and `text_projection`; `logit_scale` unused)."""
    expected = ("vision_model.", "visual_projection.", "text_model.", "text_projection.")
    unexpected = sorted(k for k in state_dict if not k.startswith(expected)
                        and k not in ("logit_scale", "text_model.embeddings.position_ids",
                                      "vision_model.embeddings.position_ids"))
    if unexpected:
        raise ConfigError(f"CLIP weights have unexpected tensors: {', '.join(unexpected[:5])}")

    def part(tower, projection):
        return {k.removeprefix(f"{tower}."): v for k, v in state_dict.items()
                if k.startswith((f"{tower}.", f"{projection}."))
                and not k.endswith("embeddings.position_ids")}

    size = vision.image_size
    return {
        "vision": params_from_state_dict(
            part("vision_model", "visual_projection"),
            abstract_params(vision, jnp.zeros((1, size, size, 3))), VISION_RULES,
            "clip vision"),
        "text": params_from_state_dict(
            part("text_model", "text_projection"),
            abstract_params(text, jnp.zeros((1, text.encoder.max_length), jnp.int32)),
            ((r"^encoder/", ""),) + TEXT_RULES, "clip text")}


def load_clip_model(path: str) -> CLIPModel:
    """The `CLIPModel` of a transformers `CLIPModel` directory (see the module docstring);
    a missing file is a ConfigError naming it."""
    if not os.path.isdir(path):
        raise ConfigError(f"CLIP model directory {path!r} does not exist (eval.clip_model_dir)")
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            raise ConfigError(f"CLIP model directory {path!r} has no {name} (a transformers "
                              f"CLIPModel directory with its tokenizer files)")
    config = read_json(os.path.join(path, "config.json"))
    projection_dim = config.get("projection_dim", 512)
    vision = CLIPVisionEncoder(**vision_encoder_config(config.get("vision_config", {}),
                                                       projection_dim))
    text = CLIPTextWithProjection(
        CLIPTextEncoder(**text_encoder_config(config.get("text_config", {}))), projection_dim)
    processor_file = os.path.join(path, "preprocessor_config.json")
    processor = read_json(processor_file) if os.path.isfile(processor_file) else {}
    return CLIPModel(vision, text,
                     clip_params(read_safetensors(os.path.join(path, "model.safetensors")),
                                 vision, text),
                     Preprocessing.from_config(processor, vision.image_size),
                     CLIPTokenizer.from_dir(path))


def image_embeddings(model: CLIPModel, images: np.ndarray, batch_size: int = 32,
                     mesh=None) -> np.ndarray:
    """(N, projection_dim) image embeddings of (N, H, W, 3) uint8 images."""
    fn = batched_feature_fn(lambda p, x: (model.vision.apply({"params": p}, x).image_embeds,),
                            model.params["vision"], batch_size, mesh)
    return fn(preprocess(images, model.preprocessing))[0]


def text_embeddings(model: CLIPModel, captions: Sequence[str], batch_size: int = 32,
                    mesh=None) -> np.ndarray:
    """(N, projection_dim) text embeddings of captions (CLIP's tokenizer, 77 tokens at most,
    truncated as transformers' tokenizer truncates)."""
    tokens = model.tokenizer(list(captions))
    fn = batched_feature_fn(lambda p, t: (model.text.apply({"params": p}, t),),
                            model.params["text"], batch_size, mesh)
    return fn(tokens)[0]


def cosines(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """cos(image_i, text_i) per pair, in float64."""
    a, b = (np.asarray(e, np.float64) for e in (image_embeds, text_embeds))
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def clip_score(image_embeds: np.ndarray, text_embeds: np.ndarray) -> float:
    """100 * mean_i max(cos(image_i, text_i), 0) (the module docstring)."""
    return float(100.0 * np.mean(np.maximum(cosines(image_embeds, text_embeds), 0.0)))


def clip_score_of(model: CLIPModel, images: np.ndarray, captions: Sequence[str],
                  batch_size: int = 32, mesh=None) -> float:
    """The CLIP score of uint8 images and the captions they were drawn for, in order."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    return clip_score(image_embeddings(model, images, batch_size, mesh),
                      text_embeddings(model, captions, batch_size, mesh))

