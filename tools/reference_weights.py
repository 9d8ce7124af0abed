"""Seeded random weights that numpy alone reproduces, for reference outputs of networks too large
to ship (the paper-size DDPM U-Net, EDM's SongUNets, Inception-v3, VGG-16).

`tools/make_reference_outputs.py` loads these into the original PyTorch network and saves only
its inputs, outputs and the tensor names and shapes; a test rebuilds the same state dict from
those names and shapes and ports it onto ours. Every tensor is drawn from its own PCG64 stream
seeded by (seed, crc32(name)), through `random_raw` (the bit generator's output, which numpy
keeps stable across versions), so the values depend on the name only, not on the order or the
numpy version. The statistics are not trivial, so a mis-mapped tensor changes the output:
kernels (2 or more dimensions, torch layout (out, in, ...)) are uniform with variance 1 / fan_in,
1-D `weight`s (normalisation scales) 1 + U(-0.25, 0.25), other vectors (biases) U(-0.25, 0.25),
and EDM's Fourier `freqs` uniform with standard deviation 16.
"""
from __future__ import annotations

import zlib

import numpy as np


def uniform(seed: int, name: str, shape) -> np.ndarray:
    """U[0, 1) float64 of `shape` from the stream of (seed, crc32(name))."""
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.random.PCG64([seed, zlib.crc32(name.encode())]).random_raw(n)
    return ((raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)


def tensor(seed: int, name: str, shape) -> np.ndarray:
    """The float32 value of the tensor `name` (see the module docstring)."""
    s = 2.0 * uniform(seed, name, shape) - 1.0
    if name.endswith("freqs"):
        value = 16.0 * np.sqrt(3.0) * s
    elif len(shape) >= 2:
        value = np.sqrt(3.0 / int(np.prod(shape[1:]))) * s
    elif name.endswith("weight"):
        value = 1.0 + 0.25 * s
    else:
        value = 0.25 * s
    return value.astype(np.float32)


def state_dict(seed: int, names, shapes) -> dict[str, np.ndarray]:
    """{name: tensor(seed, name, shape)} for the given names and shapes."""
    return {name: tensor(seed, name, tuple(int(d) for d in shape))
            for name, shape in zip(names, shapes)}


def images(seed: int, name: str, shape) -> np.ndarray:
    """Test inputs: U(-1, 1) float32 of `shape` from the stream of (seed, name)."""
    return (2.0 * uniform(seed, name, shape) - 1.0).astype(np.float32)
