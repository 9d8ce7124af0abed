"""Data: the embedded digits, TFDS through mock data, and the deterministic loader."""
import numpy as np
import pytest

from diffusion_jax.data import digits
from diffusion_jax.data.datasets import ArraySource, open_dataset
from diffusion_jax.data.loader import BatchLoader, LoaderState
from diffusion_jax.errors import DataError


def test_digits_are_real_and_scaled_to_unit_interval():
    images, labels = digits.load_digits_arrays("train")
    assert images.shape == (1500, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))
    assert len(digits.load_digits_arrays("test")[0]) == 297


def _loader(n=40, **kw):
    source = ArraySource(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1)),
                         np.arange(n, dtype=np.int32))
    return BatchLoader(source, lambda e: (e["image"], e["label"]), **dict(
        dict(global_batch=8, seed=3), **kw))


def _take(loader, k):
    it = iter(loader)
    out = [next(it) for _ in range(k)]
    it.close()
    return out


def test_loader_is_deterministic_given_the_seed_and_differs_across_seeds():
    a = [b[1] for b in _take(_loader(), 6)]
    b = [b[1] for b in _take(_loader(), 6)]
    c = [b[1] for b in _take(_loader(seed=4), 6)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))


def test_loader_visits_every_example_once_per_epoch():
    labels = np.concatenate([b[1] for b in _take(_loader(), 5)])
    assert sorted(labels) == list(range(40))


def test_loader_resumes_at_the_next_batch_from_its_state():
    full = [b[1] for b in _take(_loader(), 9)]
    loader = _loader()
    _take(loader, 4)
    state = LoaderState.from_dict(loader.state.as_dict())
    resumed = _loader()
    resumed.state = state
    np.testing.assert_array_equal(np.stack([b[1] for b in _take(resumed, 5)]), np.stack(full[4:]))


def test_processes_share_one_global_batch():
    whole = _take(_loader(), 3)
    parts = [_take(_loader(process_index=i, process_count=2), 3) for i in range(2)]
    for k in range(3):
        np.testing.assert_array_equal(np.concatenate([parts[0][k][1], parts[1][k][1]]),
                                      whole[k][1])


def test_random_flip_mirrors_width_reproducibly():
    images = np.arange(4 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 1)
    loader = BatchLoader(ArraySource(np.tile(images, (5, 1, 1, 1)), np.zeros(20, np.int32)),
                         lambda e: (e["image"], e["label"]), global_batch=20, seed=0,
                         random_flip=True)
    batch = _take(loader, 1)[0][0]
    flipped = [not any(np.array_equal(x, y) for y in images) for x in batch]
    assert 0 < sum(flipped) < 20
    for x, f in zip(batch, flipped):
        if f:
            assert any(np.array_equal(x[:, ::-1], y) for y in images)
    np.testing.assert_array_equal(batch, _take(BatchLoader(
        ArraySource(np.tile(images, (5, 1, 1, 1)), np.zeros(20, np.int32)),
        lambda e: (e["image"], e["label"]), global_batch=20, seed=0, random_flip=True), 1)[0][0])


def test_tfds_mock_data_goes_through_the_same_path():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        spec, source, decode = open_dataset("cifar10", "train")
        loader = BatchLoader(source, decode, global_batch=8, seed=0, random_flip=True)
        images, labels = _take(loader, 1)[0]
    assert spec.image_shape == (32, 32, 3)
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0 and labels.dtype == np.int32


def test_missing_tfds_data_set_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="not available.*tfds build cifar10"):
        open_dataset("cifar10", "train", data_dir=str(tmp_path))


def test_unknown_data_set_lists_the_valid_names():
    with pytest.raises(DataError, match="valid: .*cifar10.*digits"):
        open_dataset("imagenet32", "train")


def test_importing_the_package_does_not_import_tfds():
    import subprocess
    import sys

    code = ("import sys, diffusion_jax.builders, diffusion_jax.launcher, diffusion_jax.training.loop;"
            "print('tensorflow_datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
