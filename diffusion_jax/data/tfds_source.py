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
    except Exception as e:  # TFDS raises assorted types for "not prepared" and bad names
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"TFDS data set {name!r} (split {split!r}) is not available in "
            f"{data_dir or '~/tensorflow_datasets'}: {first}. Prepare it once with "
            f"`tfds build {name} --data_dir=DIR` on a machine with internet (needs TensorFlow), "
            f"or set --config.data.download=True") from None
