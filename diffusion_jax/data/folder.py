"""A folder of image-caption pairs, the layout fine-tuning sets come in: each image file (.png,
.jpg, .jpeg, .webp) with its caption in the .txt file of the same stem, or, where the folder
has a `metadata.jsonl`, one {"file_name": ..., "text": ...} object per line (the Hugging Face
`imagefolder` layout). Splits are the subfolders `train` and `test` when the folder has them,
else every split is the folder itself. Files are listed in name order.

Images are converted to RGB, resized so that the shorter side fits the requested shape (bicubic)
and centre-cropped to it: the shape is the model's (Stable Diffusion's resolution), not the
data set's.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffusion_jax.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA = "metadata.jsonl"


def split_directory(root: str, split: str) -> str:
    """`root/split` when it is a directory, else `root` (one folder serves every split)."""
    if not root or not os.path.isdir(root):
        raise DataError(f"image-caption folder {root!r} does not exist (data.data_dir)")
    sub = os.path.join(root, split)
    return sub if os.path.isdir(sub) else root


def list_pairs(directory: str) -> tuple[list[str], list[str]]:
    """(image paths, captions) of a folder, from `metadata.jsonl` or the .txt files."""
    metadata = os.path.join(directory, METADATA)
    if os.path.isfile(metadata):
        with open(metadata, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        try:
            pairs = sorted((row["file_name"], str(row["text"])) for row in rows)
        except KeyError as e:
            raise DataError(f"{metadata}: every line needs 'file_name' and 'text' ({e} missing)"
                            ) from None
        paths = [os.path.join(directory, name) for name, _ in pairs]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{metadata} names files that do not exist: {missing[:3]}")
        return paths, [caption for _, caption in pairs]
    paths, captions = [], []
    for name in sorted(os.listdir(directory)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        caption_file = os.path.join(directory, stem + ".txt")
        if not os.path.isfile(caption_file):
            raise DataError(f"{os.path.join(directory, name)} has no caption file {stem}.txt")
        with open(caption_file, encoding="utf-8") as f:
            captions.append(f.read().strip())
        paths.append(os.path.join(directory, name))
    if not paths:
        raise DataError(f"image-caption folder {directory!r} has no images "
                        f"({', '.join(IMAGE_SUFFIXES)}) with captions")
    return paths, captions


def load_resized(path: str, shape) -> np.ndarray:
    """(H, W, 3) float32 in [-1, 1]: the image resized (shorter side, bicubic) to cover
    `shape` (H, W, 3) and centre-cropped to it."""
    height, width = shape[:2]
    try:
        image = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read {path!r} as an image ({e})") from None
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return np.asarray(image, np.float32) / 127.5 - 1.0


class CaptionFolder:
    """A random-access source of {"path", "caption"} over `list_pairs(directory)`."""

    def __init__(self, directory: str):
        self.paths, self.captions = list_pairs(directory)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"path": self.paths[index], "caption": self.captions[index]}


def decoder(shape, tokenize: Callable) -> Callable:
    """example -> (image of `shape` in [-1, 1], its caption's tokens `tokenize([caption])[0]`)."""
    return lambda example: (load_resized(example["path"], shape),
                            np.asarray(tokenize([example["caption"]])[0], np.int32))
