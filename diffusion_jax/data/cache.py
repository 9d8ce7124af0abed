"""A training set passed through an encoder once and kept on disk (latent diffusion's posterior
moments, as DiT / SiT / MeanFlow / EDM2 train on precomputed latents): written resumably and
sharded over processes, then read by the loader like any random-access source.

The cache is a directory: `manifest.json` (examples, shard size, example shape, views, what
encoded it) and one `shard_KKKKK/` per `shard_size` images holding `examples.npy` (n, views,
*example_shape) float32 and `labels.npy` (n, ...). A shard appears by one directory rename,
so a killed pass leaves whole shards only and a rerun writes the missing ones; process p of P
writes shards p, p + P, ... and every process then waits for all (`barrier`). With two views the
second is the encoding of the horizontally mirrored image (the papers' flips, which cannot be
applied to latents afterwards); example j of the source is view j % views of image j // views.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Optional

import numpy as np

from diffusion_jax.errors import ConfigError, DataError

MANIFEST = "manifest.json"


def _shard_dir(path: str, k: int) -> str:
    return os.path.join(path, f"shard_{k:05d}")


def _manifest(path: str, count: int, shard_size: int, example_shape: tuple, views: int,
              encoder: str) -> dict:
    """The cache's manifest, written when missing; a ConfigError when the one there differs."""
    want = dict(examples=count, shard_size=shard_size, example_shape=list(example_shape),
                views=views, encoder=encoder)
    file = os.path.join(path, MANIFEST)
    if os.path.exists(file):
        with open(file) as f:
            have = json.load(f)
        if have != want:
            diff = ", ".join(f"{k} {have.get(k)!r} (now {v!r})" for k, v in want.items()
                             if have.get(k) != v)
            raise ConfigError(f"the latent cache {path} was written with other settings: {diff};"
                              f" delete it or point latent.cache_dir elsewhere")
        return have
    os.makedirs(path, exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(want, f, indent=1)
    os.replace(tmp, file)
    return want


def write_cache(path: str, encode: Callable[[np.ndarray], np.ndarray], example_shape: tuple,
                source, decode, *, views: int = 1, shard_size: int = 4096, encoder: str = "",
                process_index: int = 0, process_count: int = 1,
                barrier: Callable[[], None] = lambda: None,
                progress: Optional[Callable[[int], None]] = None) -> int:
    """Encodes every image of `source` (decoded by `decode(example) -> (image, label)`) with
    `encode(images (n, H, W, C) in [-1, 1]) -> (n, *example_shape)` into the cache at `path`,
    skipping the shards already there; `progress(n)` after each shard. Returns the number of
    shards this process wrote."""
    if views not in (1, 2):
        raise ConfigError(f"a latent cache holds 1 view, or 2 with the mirrored images; got "
                          f"{views}")
    count = len(source)
    if process_index == 0:
        _manifest(path, count, shard_size, example_shape, views, encoder)
    barrier()
    _manifest(path, count, shard_size, example_shape, views, encoder)
    num_shards = -(-count // shard_size)
    written = 0
    for k in range(process_index, num_shards, process_count):
        final = _shard_dir(path, k)
        if os.path.isdir(final):
            continue
        lo, hi = k * shard_size, min(count, (k + 1) * shard_size)
        decoded = [decode(source[i]) for i in range(lo, hi)]
        images = np.stack([np.asarray(image, np.float32) for image, _ in decoded])
        encoded = [encode(images)] + ([encode(images[:, :, ::-1])] if views == 2 else [])
        examples = np.stack([np.asarray(e, np.float32) for e in encoded], axis=1)
        if examples.shape[2:] != tuple(example_shape):
            raise ConfigError(f"the encoder gives examples of shape {examples.shape[2:]}, not "
                              f"{tuple(example_shape)}")
        tmp = f"{final}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        np.save(os.path.join(tmp, "examples.npy"), examples)
        np.save(os.path.join(tmp, "labels.npy"), np.stack([np.asarray(l) for _, l in decoded]))
        os.replace(tmp, final)
        written += 1
        if progress is not None:
            progress(hi - lo)
    barrier()
    return written


class CachedSource:
    """The cache at `path` as a random-access source of {'image': example, 'label': label}, the
    shards memory-mapped on first use. A DataError when the cache is missing or incomplete."""

    def __init__(self, path: str):
        file = os.path.join(path, MANIFEST)
        if not os.path.exists(file):
            raise DataError(f"no latent cache at {path}: write it with --mode=encode_latents "
                            f"(or let --mode=train write it)")
        with open(file) as f:
            self.manifest = json.load(f)
        self.path, self.views = path, self.manifest["views"]
        self.shard_size = self.manifest["shard_size"]
        num_shards = -(-self.manifest["examples"] // self.shard_size)
        missing = [k for k in range(num_shards) if not os.path.isdir(_shard_dir(path, k))]
        if missing:
            raise DataError(f"the latent cache {path} is incomplete: {len(missing)} of "
                            f"{num_shards} shards missing; rerun --mode=encode_latents")
        self._shards: dict = {}

    def __len__(self) -> int:
        return self.manifest["examples"] * self.views

    def _shard(self, k: int):
        if k not in self._shards:
            d = _shard_dir(self.path, k)
            self._shards[k] = (np.load(os.path.join(d, "examples.npy"), mmap_mode="r"),
                               np.load(os.path.join(d, "labels.npy"), mmap_mode="r"))
        return self._shards[k]

    def __getitem__(self, j: int) -> dict:
        if not 0 <= j < len(self):
            raise IndexError(j)
        image, view = divmod(int(j), self.views)
        examples, labels = self._shard(image // self.shard_size)
        i = image % self.shard_size
        return {"image": np.asarray(examples[i, view]), "label": np.asarray(labels[i])}


def cached_source(path: str, encode: Callable[[np.ndarray], np.ndarray], example_shape: tuple,
                  source, decode, **options) -> tuple:
    """(source, decode) over the cache at `path` of encode(training images), written first where
    shards are missing (`write_cache`, with its `options`)."""
    write_cache(path, encode, example_shape, source, decode, **options)
    cached = CachedSource(path)
    return cached, lambda ex: (np.asarray(ex["image"]), ex["label"])
