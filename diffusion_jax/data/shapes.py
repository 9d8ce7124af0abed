"""A generated captioned data set: one coloured shape at one of four places, 16x16 RGB.

Each image is a red, green or blue square, circle or triangle on black, centred on the left,
right, top or bottom (one pixel of jitter, radius 2.5..3.5 pixels), captioned like
"a red circle on the left". Example i of a split is drawn from the generator seeded with
(split, i), so the data are the same on every machine; `train` has 4,096 images, `test` 512.
Labels are the caption's byte tokens (`diffusion_jax.text`, length `CAPTION_LENGTH`).
`colour_of` and `position_of` are the simple detectors that check whether generated images
follow their captions.
"""
from __future__ import annotations

import functools

import numpy as np

from diffusion_jax import text

IMAGE_SHAPE = (16, 16, 3)
CAPTION_LENGTH = 32
COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0)}
SHAPES = ("square", "circle", "triangle")
POSITIONS = {"on the left": (8.0, 4.0), "on the right": (8.0, 12.0), "at the top": (4.0, 8.0),
             "at the bottom": (12.0, 8.0)}  # (row, column) of the shape's centre
SPLITS = {"train": (0, 4096), "test": (1, 512)}


def caption(colour: str, shape: str, position: str) -> str:
    return f"a {colour} {shape} {position}"


def _mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    if shape == "square":
        return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
    if shape == "circle":
        return dy ** 2 + dx ** 2 <= r ** 2
    return (dy <= 0.7 * r) & (dy >= -r) & (np.abs(dx) <= 0.5 * (dy + r))  # pointing up


def draw(colour: str, shape: str, position: str, rng: np.random.Generator) -> np.ndarray:
    """One (16, 16, 3) float32 image in [-1, 1]."""
    cy, cx = np.asarray(POSITIONS[position]) + rng.integers(-1, 2, size=2)
    r = rng.uniform(2.5, 3.5)
    yy, xx = np.mgrid[:IMAGE_SHAPE[0], :IMAGE_SHAPE[1]].astype(np.float32) + 0.5
    inside = _mask(shape, yy - cy, xx - cx, r)
    image = np.full(IMAGE_SHAPE, -1.0, np.float32)
    image[inside] = COLOURS[colour]
    return image


@functools.lru_cache(maxsize=None)
def load_shapes(split: str = "train") -> tuple[np.ndarray, np.ndarray, tuple]:
    """(images (N, 16, 16, 3) in [-1, 1], caption tokens (N, 32) int32, captions)."""
    if split not in SPLITS:
        raise ValueError(f"shapes split must be one of {', '.join(SPLITS)}; got {split!r}")
    split_id, n = SPLITS[split]
    images, captions = [], []
    colours, positions = list(COLOURS), list(POSITIONS)
    for i in range(n):
        rng = np.random.default_rng([20261201, split_id, i])
        c, s, p = (colours[rng.integers(3)], SHAPES[rng.integers(3)],
                   positions[rng.integers(4)])
        images.append(draw(c, s, p, rng))
        captions.append(caption(c, s, p))
    return np.stack(images), text.tokenize_all(captions, CAPTION_LENGTH), tuple(captions)


def attributes(captions) -> tuple[np.ndarray, np.ndarray]:
    """(colour index, position index) of each caption "a <colour> <shape> <position>"."""
    colours, positions = list(COLOURS), list(POSITIONS)
    words = [c.split(" ", 3) for c in captions]
    return (np.asarray([colours.index(w[1]) for w in words]),
            np.asarray([positions.index(w[3]) for w in words]))


def colour_of(images: np.ndarray, min_margin: float = 0.0) -> np.ndarray:
    """Detector: index into COLOURS of the channel with the largest mean (N,); -1 where it
    does not exceed the next channel's mean by more than `min_margin` (a shape of n pixels on
    black gives 2 n / 256: every square and circle of the data exceeds 0.1, triangles do not)."""
    means = np.asarray(images).reshape(len(images), -1, 3).mean(axis=1)
    top2 = np.sort(means, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > min_margin
    return np.where(clear, np.argmax(means, axis=-1), -1)


def position_of(images: np.ndarray) -> np.ndarray:
    """Detector: index into POSITIONS of the nearest place to the brightness centre of mass."""
    w = np.clip(np.asarray(images).max(axis=-1) + 1.0, 0.0, None)  # (N, H, W), black = 0
    yy, xx = np.mgrid[:IMAGE_SHAPE[0], :IMAGE_SHAPE[1]].astype(np.float32) + 0.5
    total = w.sum(axis=(1, 2)) + 1e-6
    centre = np.stack([(w * yy).sum(axis=(1, 2)) / total, (w * xx).sum(axis=(1, 2)) / total], -1)
    places = np.asarray(list(POSITIONS.values()))
    return np.argmin(((centre[:, None] - places[None]) ** 2).sum(-1), axis=-1)
