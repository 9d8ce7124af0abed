"""Data sets by name: their image shape, class count and how an example becomes an image.

Every data set yields images as float32 NHWC in [-1, 1] and int32 labels. `digits` is embedded
(scikit-learn) and `shapes` generated (`shapes.py`); `folder` is a folder of image-caption
pairs (`folder.py`, `data_dir`) whose images take the shape the caller asks for; the others are
TFDS data sets read without TensorFlow. A captioned data set (`caption_length` > 0) yields its
captions' tokens as the label: UTF-8 byte tokens (`diffusion_jax.text`, shape
(caption_length,)), or the caller's `tokenize` (e.g. a CLIP tokenizer).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from diffusion_jax import text
from diffusion_jax.data import digits, folder, shapes
from diffusion_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    image_shape: tuple[int, int, int]
    num_classes: int
    num_levels: int  # quantisation levels of a pixel, for dequantisation and bits/dim
    tfds_name: Optional[str] = None
    crop: Optional[int] = None  # centre crop before resizing (CelebA: 140)
    caption_length: int = 0  # > 0: labels are caption tokens of this length
    any_size: bool = False  # images of any size, resized to the caller's (image_shape (0, 0, C))
    adm_crop: bool = False  # images of any size, ADM's centre crop to image_shape (`adm_crop`)


DATASETS = {
    "digits": DatasetSpec((8, 8, 1), 10, digits.NUM_LEVELS),
    "shapes": DatasetSpec(shapes.IMAGE_SHAPE, 0, 256, caption_length=shapes.CAPTION_LENGTH),
    "mnist": DatasetSpec((28, 28, 1), 10, 256, "mnist"),
    "fashion_mnist": DatasetSpec((28, 28, 1), 10, 256, "fashion_mnist"),
    "cifar10": DatasetSpec((32, 32, 3), 10, 256, "cifar10"),
    "celeb_a": DatasetSpec((64, 64, 3), 0, 256, "celeb_a", crop=140),
    "folder": DatasetSpec((0, 0, 3), 0, 256, caption_length=128, any_size=True),
    # ImageNet (TFDS imagenet2012, a manual download) centre-cropped as ADM / DiT / SiT /
    # MeanFlow / EDM2 prepare it; latent models encode it once (`latent.cache_dir`)
    "imagenet256": DatasetSpec((256, 256, 3), 1000, 256, "imagenet2012", adm_crop=True),
    "imagenet512": DatasetSpec((512, 512, 3), 1000, 256, "imagenet2012", adm_crop=True),
    # ImageNet 64x64 (EDM2's img64 presets): TFDS's box-downsampled whole images (Chrabaszcz
    # et al. 2017), not the centre crop of EDM's dataset_tool
    "imagenet64": DatasetSpec((64, 64, 3), 1000, 256, "imagenet_resized/64x64"),
}


class ArraySource:
    """An in-memory random-access source with the same interface as a TFDS data source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}


def adm_crop(image: np.ndarray, size: int) -> np.ndarray:
    """ADM's `center_crop_arr` (Dhariwal & Nichol 2021; DiT's and SiT's `train.py`): halve the
    image with a box filter while its short side is >= 2 size, resize it bicubically so the
    short side is `size` (each side rounded), then take the centre size x size crop."""
    from PIL import Image

    pil = Image.fromarray(image)
    while min(*pil.size) >= 2 * size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = size / min(*pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
    out = np.asarray(pil)
    top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
    return out[top:top + size, left:left + size]


def _uint8_to_unit(image: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    image = np.asarray(image)
    if spec.adm_crop:
        image = adm_crop(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image,
                         spec.image_shape[0])
        image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    if image.ndim == 2:
        image = image[..., None]
    if spec.crop is not None:
        h, w = image.shape[:2]
        top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
        image = image[top:top + spec.crop, left:left + spec.crop]
    if image.shape != spec.image_shape:
        from PIL import Image

        size = spec.image_shape[:2]
        squeeze = image.shape[-1] == 1
        pil = Image.fromarray(image[..., 0] if squeeze else image)
        image = np.asarray(pil.resize((size[1], size[0]), Image.BICUBIC))
        image = image[..., None] if squeeze else image
    return image.astype(np.float32) / 127.5 - 1.0


def open_dataset(name: str, split: str, *, data_dir: Optional[str] = None,
                 download: bool = False, image_shape: Optional[tuple] = None,
                 tokenize: Optional[Callable] = None) -> tuple[DatasetSpec, object, Callable]:
    """(spec, random-access source, example -> (image in [-1, 1], label)).

    `image_shape`: the shape the caller needs; a data set of any size (`folder`) is resized to
    it, any other must have it. `tokenize(captions) -> (N, L) int32`: the tokens of a captioned
    data set's labels (default: byte tokens of the spec's caption_length)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    if spec.any_size and image_shape is None:
        raise DataError(f"data set {name!r} has images of any size: give the shape to read")
    if (image_shape is not None and not spec.any_size
            and tuple(image_shape) != tuple(spec.image_shape)):
        raise DataError(f"data set {name!r} has images of shape {tuple(spec.image_shape)}, not "
                        f"the {tuple(image_shape)} asked for")
    if name == "shapes":
        images, tokens, texts = shapes.load_shapes(split)
        if tokenize is not None:
            tokens = np.asarray(tokenize(texts), np.int32)
        return spec, ArraySource(images, tokens), _identity_example
    if name == "folder":
        if tokenize is None:
            tokenize = lambda texts: text.tokenize_all(list(texts), spec.caption_length)  # noqa: E731
        source = folder.CaptionFolder(folder.split_directory(data_dir, split))
        return spec, source, folder.decoder(image_shape, tokenize)
    if spec.tfds_name is None:
        return spec, ArraySource(*digits.load_digits_arrays(split)), _identity_example
    from diffusion_jax.data.tfds_source import open_source

    source = open_source(spec.tfds_name, split, data_dir, download)

    def decode(example):
        label = np.int32(example.get("label", 0)) if spec.num_classes else np.int32(0)
        return _uint8_to_unit(example["image"], spec), label

    return spec, source, decode


def captions(name: str, split: str, *, data_dir: Optional[str] = None) -> list[str]:
    """The captions of a captioned data set's `split`, in order (no image is read)."""
    if name == "shapes":
        return list(shapes.load_shapes(split)[2])
    if name == "folder":
        return folder.CaptionFolder(folder.split_directory(data_dir, split)).captions
    raise DataError(f"data set {name!r} has no captions")


def first_images(name: str, split: str, count: int, *, data_dir: Optional[str] = None,
                 download: bool = False, image_shape: Optional[tuple] = None) -> np.ndarray:
    """The first `count` images of `split` (all, when it has fewer), in [-1, 1] (of
    `image_shape`, see `open_dataset`)."""
    _, source, decode = open_dataset(name, split, data_dir=data_dir, download=download,
                                     image_shape=image_shape)
    return np.stack([decode(source[i])[0] for i in range(min(count, len(source)))])


def _identity_example(example):
    return example["image"], np.asarray(example["label"], np.int32)
