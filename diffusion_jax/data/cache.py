"""A training set passed through an encoder once and kept on disk (latent diffusion's posterior
moments): built when missing, then read by the loader like any random-access source."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from diffusion_jax.data.datasets import ArraySource
from diffusion_jax.errors import ConfigError


def cached_source(path: str, encode: Callable[[np.ndarray], np.ndarray], example_shape: tuple,
                  source, decode) -> tuple:
    """(source, decode) over `path`, an .npy of encode(all training images): written when it
    does not exist (every process writes the same file atomically), reused while it does, and a
    ConfigError when it holds another shape."""
    if not os.path.exists(path):
        images = np.stack([decode(source[i])[0] for i in range(len(source))])
        out = encode(images)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, out)
        os.replace(tmp, path)
    cached = np.load(path, mmap_mode="r")
    if cached.shape != (len(source),) + tuple(example_shape):
        raise ConfigError(f"latent cache {path} holds {cached.shape}, not the examples "
                          f"{tuple(example_shape)} of {len(source)} training images: delete it")
    labels = [decode(source[i])[1] for i in range(len(source))]
    return ArraySource(cached, labels), lambda ex: (np.asarray(ex["image"]), ex["label"])
