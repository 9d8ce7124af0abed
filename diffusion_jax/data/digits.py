"""The embedded default data set: the 1,797 real 8x8 handwritten digits of scikit-learn.

Pixels are integers 0..16; `load_digits_arrays` maps them to [-1, 1] as x / 8 - 1 and keeps the
native 8x8 resolution (one channel), so no pixel is invented. The split is fixed: the first
1,500 images are `train`, the remaining 297 are `test`.
"""
from __future__ import annotations

import numpy as np

NUM_TRAIN = 1500
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_LEVELS = 17  # pixel values 0..16, used for dequantisation and bits/dim


def load_digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Returns (images float32 (N, 8, 8, 1) in [-1, 1], labels int32 (N,))."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"digits split must be one of train, test, all; got {split!r}")
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    labels = digits.target.astype(np.int32)
    if split == "train":
        return images[:NUM_TRAIN], labels[:NUM_TRAIN]
    if split == "test":
        return images[NUM_TRAIN:], labels[NUM_TRAIN:]
    return images, labels
