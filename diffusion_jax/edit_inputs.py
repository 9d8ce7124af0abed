"""Input images and masks for editing from the launcher's sample mode, and the result files.

`edit.input` is a PNG file or a directory of PNG files (sorted by name); each image is converted
to the data set's channels (grey or RGB) and resized to its height and width with Pillow, then
scaled to [-1, 1]. `edit.mask` is one PNG for every input or a directory with one PNG per input
(same order): after conversion to grey and a nearest-neighbour resize, white (>= 128) marks a
known pixel that inpainting keeps, black a pixel to generate.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffusion_jax import images as image_io
from diffusion_jax.errors import ConfigError


def png_paths(path: str, key: str) -> list[str]:
    """[path] for a file, the sorted *.png files of a directory; ConfigError otherwise."""
    if not path:
        raise ConfigError(f"{key} is empty; give a PNG file or a directory of PNG files")
    if os.path.isdir(path):
        paths = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(".png"))
        if not paths:
            raise ConfigError(f"{key}: directory {path!r} has no .png files")
        return paths
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: {path!r} does not exist")
    return [path]


def _read(path: str, key: str, read):
    try:
        return read(path)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"{key}: cannot read {path!r} as an image ({e})") from None


def load_images(path: str, shape) -> np.ndarray:
    """(N, H, W, C) float32 in [-1, 1] from `path` (see the module docstring)."""
    if shape[-1] not in (1, 3):
        raise ConfigError(f"edit.input: images of {shape[-1]} channels cannot be read from PNG")
    return np.stack([_read(p, "edit.input", lambda p: image_io.load_image(p, shape))
                     for p in png_paths(path, "edit.input")])


def load_masks(path: str, shape, num: int) -> np.ndarray:
    """(num, H, W, C) bool, True = known pixel, from one mask PNG or one per input."""
    paths = png_paths(path, "edit.mask")
    if len(paths) not in (1, num):
        raise ConfigError(f"edit.mask: {len(paths)} masks for {num} input images; give one "
                          f"mask or one per input")

    def read(p):
        img = Image.open(p).convert("L").resize((shape[1], shape[0]), Image.NEAREST)
        return np.asarray(img) >= 128

    masks = np.stack([_read(p, "edit.mask", read) for p in paths])
    return np.broadcast_to(masks[..., None], (num,) + tuple(shape)).copy()


def save_edits(directory: str, name: str, inputs: np.ndarray, results: np.ndarray,
               masks: np.ndarray | None = None, per_row: int = 16) -> str:
    """`name.png`: blocks of `per_row` columns with rows input / mask (white = known) / result;
    `name.npz`: inputs, results and masks. Returns the PNG path."""
    os.makedirs(directory, exist_ok=True)
    rows = [inputs] + ([] if masks is None else [np.where(masks, 1.0, -1.0)]) + [results]
    n, k = len(inputs), min(len(inputs), per_row)
    pad = lambda a: np.concatenate([a, -np.ones((k - len(a),) + a.shape[1:], a.dtype)])
    tiles = [pad(r[i:i + k]) for i in range(0, n, k) for r in rows]
    grid = image_io.make_grid(image_io.to_uint8(np.concatenate(tiles)), ncols=k)
    upscale = max(1, 64 // inputs.shape[1])
    grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    png = os.path.join(directory, f"{name}.png")
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(png)
    arrays = dict(inputs=inputs, results=results)
    if masks is not None:
        arrays["masks"] = masks
    np.savez_compressed(os.path.join(directory, f"{name}.npz"), **arrays)
    return png
