"""TFDS data sets read through `tfds.data_source` (ArrayRecord, random access, no TensorFlow).

tensorflow_datasets is imported here only, and only when a TFDS data set is asked for. Nothing
downloads unless `download=True`; a data set that is not prepared raises DataError saying how
to prepare it.
"""
from __future__ import annotations

from diffusion_jax.errors import DataError


def open_source(name: str, split: str, data_dir: str | None, download: bool):
    """A random-access source of `name`'s `split`: len(src) and src[i] -> feature dict."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise DataError(f"data set {name!r} needs tensorflow-datasets: pip install "
                        f"tensorflow-datasets ({e})") from None
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception:  # TFDS raises assorted types for "not prepared" and bad names
        raise DataError(
            f"TFDS data set {name!r} (split {split!r}) is not available (not prepared as "
            f"ArrayRecord) in {data_dir or '~/tensorflow_datasets'}. Prepare it once with "
            f"`tfds build {name} --file_format=array_record --data_dir=DIR` (needs TensorFlow "
            f"and internet) and set --config.data.data_dir=DIR, "
            f"or set --config.data.download=True") from None
