"""Image files with Pillow: sample grids and reading input images/masks for editing."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 by round(127.5 (x + 1)), clipped."""
    return np.clip(np.round(127.5 * (np.asarray(images, np.float32) + 1.0)), 0, 255).astype(np.uint8)


def quantize(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats as an 8-bit image file would hold them (`to_uint8`), back in [-1, 1]: what
    every sample metric sees."""
    return to_uint8(images).astype(np.float32) / 127.5 - 1.0


def save_each(directory: str, images: np.ndarray) -> None:
    """One PNG per image in [-1, 1]: `directory/000000.png`, `000001.png`, ..."""
    os.makedirs(directory, exist_ok=True)
    for i, image in enumerate(to_uint8(images)):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            os.path.join(directory, f"{i:06d}.png"))


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows, cols) grid with `pad` pixel gaps."""
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return grid


def save_grid(path: str, images: np.ndarray, upscale: int = 1) -> None:
    """Write images in [-1, 1] as a PNG grid, each pixel repeated `upscale` times."""
    grid = make_grid(to_uint8(images))
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def load_image(path: str, shape) -> np.ndarray:
    """Read an image file as float32 (H, W, C) in [-1, 1], resized to `shape` (H, W, C)."""
    mode = "L" if shape[-1] == 1 else "RGB"
    img = Image.open(path).convert(mode).resize((shape[1], shape[0]), Image.BICUBIC)
    arr = np.asarray(img, np.float32).reshape(shape)
    return arr / 127.5 - 1.0
