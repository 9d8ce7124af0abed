"""Sample metrics of `--mode=eval` in the feature space of the data set's network.

The embedded digits use a small classifier trained on digits (`digits_features`): its Frechet
distance is *not* FID, and its keys say `digits_`. The captioned shapes use their colour and
position detectors. Every other data set uses the FID Inception-v3 (2015-12-05 graph) whose
weights `eval.inception_weights` names: FID against `eval.reference_stats` (an `.npz` with
`mu`, `sigma`, e.g. the published CIFAR-10 training-set statistics) or, when that is empty,
against `eval.num_reference` images of the `eval.reference_split` split (a folder of
image-caption pairs, Stable Diffusion's data set, is read at the samples' resolution: shorter
side resized bicubically, centre-cropped); KID and precision/recall always use those real
images. Samples of a caption-conditioned model also get a CLIP score (`evaluation.clip_score`)
against the captions they were drawn for when `eval.clip_model_dir` names a transformers
`CLIPModel` directory.

Protocol (`eval.inception_protocol`, recorded as `inception_protocol` in the metrics): samples
are quantised to uint8 as they would be saved, then resized to 299x299 bilinearly and scaled to
the network's range, either as the TensorFlow graph of 2015-12-05 does it (`tensorflow`, the
default: `ResizeBilinear` without half-pixel centres, (v - 128) / 128; the protocol of TTUR's
and EDM's FID code and of the published statistics files) or as pytorch-fid does
(`pytorch_fid`: half-pixel bilinear resize, 2 v / 255 - 1). FIDs under the two differ
slightly; compare numbers of one protocol only (see `inception.preprocess`). Reference
statistics are computed with the same protocol as the samples.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from diffusion_jax.data.datasets import DATASETS, first_images
from diffusion_jax.errors import ConfigError
from diffusion_jax.images import quantize


def feature_metrics(features, samples, reference, prefix: str = "",
                    reference_stats: tuple | None = None, stats_path: str = "") -> dict:
    """Frechet distance, KID, precision/recall and the classifier (Inception) score of
    `samples` against `reference` images in the space of `features(images) -> (feats, logits)`.
    Reference statistics computed here (no `reference_stats`) are written to `stats_path`
    (an `.npz` with `mu`, `sigma`, reusable as `eval.reference_stats`) when it is given."""
    from diffusion_jax.evaluation.frechet import (feature_statistics, frechet_distance,
                                                  save_statistics)
    from diffusion_jax.evaluation.inception_score import inception_score
    from diffusion_jax.evaluation.kid import kernel_inception_distance
    from diffusion_jax.evaluation.precision_recall import precision_recall

    fake, fake_logits = features(samples)
    real, _ = features(reference)
    stats = reference_stats
    if stats is None:
        stats = feature_statistics(real)
        if stats_path and jax.process_index() == 0:
            save_statistics(stats_path, *stats)
    kid, _ = kernel_inception_distance(fake, real, subset_size=min(1000, len(fake), len(real)))
    score, _ = inception_score(fake_logits, splits=min(10, len(fake)))
    precision, recall = precision_recall(real, fake, k=3)
    name = "frechet_distance" if prefix else "fid"
    return {f"{prefix}{name}": frechet_distance(*feature_statistics(fake), *stats),
            f"{prefix}kid": kid, f"{prefix}{'classifier' if prefix else 'inception'}_score": score,
            "precision": precision, "recall": recall}


def _reference_images(config, n: int, image_shape=None) -> np.ndarray:
    """The first `n` images of `eval.reference_split`, at `image_shape` (the samples') for a
    data set of any size."""
    spec = DATASETS.get(config.data.dataset)
    return first_images(config.data.dataset, config.eval.reference_split, n,
                        data_dir=config.data.data_dir or None, download=config.data.download,
                        image_shape=image_shape if spec is not None and spec.any_size else None)


def _check_feature_files(config) -> None:
    """ConfigError when the reference statistics or the FID Inception weights are missing."""
    e = config.eval
    if e.reference_stats and not os.path.exists(e.reference_stats):
        raise ConfigError(f"eval.reference_stats {e.reference_stats!r} does not exist")
    if config.data.dataset not in ("shapes", "digits"):  # the FID Inception's data sets
        if not e.inception_weights:
            raise ConfigError(f"eval of {config.data.dataset!r} needs the FID Inception weights: "
                              f"set eval.inception_weights (see tools/convert_inception_weights.py)")
        if not os.path.exists(e.inception_weights):
            raise ConfigError(f"eval.inception_weights {e.inception_weights!r} does not exist")


def check_files(config, captioned: bool) -> None:
    """ConfigError when a file the metrics of `config` need is missing (run before sampling):
    the reference statistics, the FID Inception weights, the CLIP model directory (which needs
    a caption-conditioned model)."""
    _check_feature_files(config)
    e = config.eval
    if e.get("clip_model_dir", ""):
        if not captioned:
            raise ConfigError("eval.clip_model_dir: the CLIP score needs a caption-conditioned "
                              "model")
        from diffusion_jax.evaluation.clip_score import REQUIRED_FILES

        for name in REQUIRED_FILES:
            if not os.path.isfile(os.path.join(e.clip_model_dir, name)):
                raise ConfigError(f"eval.clip_model_dir {e.clip_model_dir!r} has no {name} (a "
                                  f"transformers CLIPModel directory with its tokenizer files)")


def dataset_metrics(config, samples: np.ndarray, directory: str = "", mesh=None) -> dict:
    """The metrics of `samples` for the configured data set (see the module docstring); the
    reference statistics it computes go to `directory/reference_stats.npz` when given. With a
    `mesh` the feature network runs on batches split over its devices."""
    samples = quantize(samples)  # clipped and 8-bit, as saved: the same for every feature space
    image_shape = samples.shape[1:]
    ndev = mesh.devices.size if mesh is not None else 1
    batch = lambda size: -(-size // ndev) * ndev  # noqa: E731  (a multiple of the devices)
    from diffusion_jax.evaluation.frechet import load_statistics

    e = config.eval
    stats_path = os.path.join(directory, "reference_stats.npz") if directory else ""
    _check_feature_files(config)
    stats = load_statistics(e.reference_stats) if e.reference_stats else None
    if config.data.dataset == "shapes":
        return shapes_caption_metrics(samples)
    if config.data.dataset == "digits":
        from diffusion_jax.evaluation.digits_features import digits_feature_fn

        return feature_metrics(digits_feature_fn(batch(512), mesh=mesh), samples,
                               _reference_images(config, e.num_reference, image_shape),
                               prefix="digits_",
                               reference_stats=stats, stats_path=stats_path)
    from diffusion_jax.errors import choose
    from diffusion_jax.evaluation.inception import PROTOCOLS, inception_feature_fn

    protocol = e.get("inception_protocol", "tensorflow")
    choose("eval.inception_protocol", protocol, PROTOCOLS)
    features = inception_feature_fn(e.inception_weights, batch(200), mesh, protocol=protocol)
    return dict(feature_metrics(features, samples,
                                _reference_images(config, e.num_reference, image_shape),
                                reference_stats=stats, stats_path=stats_path),
                inception_protocol=protocol)


def caption_metrics(config, samples: np.ndarray, captions, mesh=None) -> dict:
    """{"clip_score"} of `samples` (in [-1, 1], quantised to 8 bits as saved) against the
    `captions` they were drawn for, with the CLIP model of `eval.clip_model_dir`; {} when
    that is empty."""
    model_dir = config.eval.get("clip_model_dir", "")
    if not model_dir:
        return {}
    from diffusion_jax.evaluation.clip_score import clip_score_of, load_clip_model
    from diffusion_jax.images import to_uint8

    ndev = mesh.devices.size if mesh is not None else 1
    return {"clip_score": clip_score_of(load_clip_model(model_dir), to_uint8(samples),
                                        list(captions), batch_size=-(-64 // ndev) * ndev,
                                        mesh=mesh)}


def shapes_caption_metrics(samples: np.ndarray) -> dict:
    """How often samples drawn for the test captions of `shapes` (in order, as `evaluate` draws
    them) have the caption's colour and place, by the data set's detectors."""
    from diffusion_jax.data import shapes

    captions = shapes.load_shapes("test")[2]
    captions = [captions[i % len(captions)] for i in range(len(samples))]
    colour, position = shapes.attributes(captions)
    return {"shapes_colour_accuracy": float(np.mean(shapes.colour_of(samples) == colour)),
            "shapes_position_accuracy": float(np.mean(shapes.position_of(samples) == position))}


