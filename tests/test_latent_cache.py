"""The latent pre-encoding pipeline of the ImageNet latent models: ADM's centre crop, the
resumable, process-sharded cache of `data.cache`, and a released-VAE latent model (diffusers
`AutoencoderKL` directory) that encodes its training set once and trains and samples from it."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import launch_one_device

from diffusion_jax import parallel
from diffusion_jax.data import cache as data_cache
from diffusion_jax.data.datasets import ArraySource, adm_crop, first_images
from diffusion_jax.errors import ConfigError, DataError
from diffusion_jax.importers import stable_diffusion as sd_importer
from diffusion_jax.runs import restore_run

TINY_VAE = os.path.join(os.path.dirname(__file__), "data", "sd_tiny", "sd15", "vae")


def center_crop_arr(pil_image, image_size):
    """ADM's / DiT's `center_crop_arr`, transcribed from guided-diffusion's image_datasets.py."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
                                 resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


@pytest.mark.parametrize("shape", [(375, 500, 3), (1100, 700, 3), (64, 80, 3), (300, 256)])
def test_adm_crop_is_guided_diffusions_center_crop(shape):
    """Landscape, portrait (two box halvings), upsampled and grayscale images."""
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(adm_crop(image, 32 if shape[0] < 100 else 256),
                                  center_crop_arr(Image.fromarray(image),
                                                  32 if shape[0] < 100 else 256))


def _source(n=10):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (n, 4, 6, 3)).astype(np.float32)
    return ArraySource(images, np.arange(n, dtype=np.int32)), lambda ex: (ex["image"],
                                                                          ex["label"])


def _encode(calls):
    def encode(x):
        calls.append(len(x))
        return np.concatenate([x.mean(-1, keepdims=True), x[..., :1] ** 2], -1)
    return encode


def _contents(path):
    cached = data_cache.CachedSource(path)
    return (np.stack([cached[j]["image"] for j in range(len(cached))]),
            np.stack([cached[j]["label"] for j in range(len(cached))]))


def test_a_killed_pass_resumes_and_writes_only_the_missing_shards(tmp_path):
    """Shards of 3 of 10 images: a pass stopped after two shards (and a half-written shard left
    by a kill) resumes with the other two shards only; the cache equals an uninterrupted one."""
    source, decode = _source()
    whole = str(tmp_path / "whole")
    data_cache.write_cache(whole, _encode([]), (4, 6, 2), source, decode, shard_size=3)

    path, calls = str(tmp_path / "resumed"), []

    def stop_after_two(x):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _encode(calls)(x)

    with pytest.raises(KeyboardInterrupt):
        data_cache.write_cache(path, stop_after_two, (4, 6, 2), source, decode, shard_size=3)
    os.makedirs(os.path.join(path, "shard_00002.12345.tmp"))  # what a kill mid-write leaves
    with pytest.raises(DataError, match="2 of 4 shards missing"):
        data_cache.CachedSource(path)
    calls.clear()
    written = data_cache.write_cache(path, _encode(calls), (4, 6, 2), source, decode,
                                     shard_size=3)
    assert written == 2 and calls == [3, 1]
    for a, b in zip(_contents(path), _contents(whole)):
        np.testing.assert_array_equal(a, b)
    images, labels = _contents(path)
    np.testing.assert_allclose(images[..., 0], source.images.mean(-1), rtol=1e-6)
    assert labels.tolist() == list(range(10))


def test_processes_write_disjoint_shards_whose_union_is_the_cache(tmp_path):
    """Process p of 2 writes shards p, p + 2: after process 0 alone the cache is incomplete;
    after both it equals a one-process cache."""
    source, decode = _source()
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    data_cache.write_cache(one, _encode([]), (4, 6, 2), source, decode, shard_size=3)
    calls = []
    data_cache.write_cache(two, _encode(calls), (4, 6, 2), source, decode, shard_size=3,
                           process_index=0, process_count=2)
    assert calls == [3, 3] and sorted(os.listdir(two)) == ["manifest.json", "shard_00000",
                                                           "shard_00002"]
    with pytest.raises(DataError, match="incomplete"):
        data_cache.CachedSource(two)
    data_cache.write_cache(two, _encode(calls), (4, 6, 2), source, decode, shard_size=3,
                           process_index=1, process_count=2)
    for a, b in zip(_contents(two), _contents(one)):
        np.testing.assert_array_equal(a, b)


def test_two_views_hold_the_mirrored_images_and_settings_are_checked(tmp_path):
    """views=2: example 2 i + 1 is the encoding of image i mirrored left-right; a cache written
    with other settings, or an encoder of another shape, is a one-line ConfigError."""
    source, decode = _source(4)
    path = str(tmp_path / "c")
    data_cache.write_cache(path, _encode([]), (4, 6, 2), source, decode, views=2,
                           shard_size=3, encoder="vae-a")
    images, labels = _contents(path)
    assert len(images) == 8 and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    np.testing.assert_allclose(images[1::2], _encode([])(source.images[:, :, ::-1]), rtol=1e-6)
    np.testing.assert_allclose(images[0::2], _encode([])(source.images), rtol=1e-6)
    with pytest.raises(ConfigError, match="encoder 'vae-a'"):
        data_cache.write_cache(path, _encode([]), (4, 6, 2), source, decode, views=2,
                               shard_size=3, encoder="vae-b")
    with pytest.raises(ConfigError, match="shape"):
        data_cache.write_cache(str(tmp_path / "d"), _encode([]), (4, 6, 3), source, decode)


@pytest.mark.slow
def test_a_released_vae_latent_model_encodes_once_trains_and_samples(tmp_path):
    """EDM on the 8x8x4 latents of a random diffusers AutoencoderKL (saved by diffusers'
    `save_pretrained`, tests/data/sd_tiny/sd15/vae) of the 16x16 shapes: --mode=encode_latents
    writes the cache, whose moments are the VAE's posterior moments of the training images;
    training reads it with the VAE's fixed scale 0.18215 and the VAE weights in the checkpoint,
    and samples decode to 16x16x3."""
    cache, encode_dir, workdir = (str(tmp_path / d) for d in ("cache", "encode", "run"))
    common = ["--config=configs/edm/digits.py", "--config.data.dataset=shapes",
              f"--config.latent.vae={TINY_VAE}", f"--config.latent.vae_dir={TINY_VAE}",
              f"--config.latent.cache_dir={cache}", "--config.model.nf=8",
              "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
              "--config.training.num_steps=4", "--config.training.batch_size=16",
              "--config.training.checkpoint_every=4", "--config.training.preview_samples=0",
              "--config.sampling.num_samples=4", "--config.sampling.batch_size=4",
              "--config.sampling.num_steps=3"]
    result = launch_one_device(*common, "--mode=encode_latents", f"--workdir={encode_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    cached = data_cache.CachedSource(os.path.join(cache, "shapes_train_latent_moments"))
    vae, scale = sd_importer.released_vae(TINY_VAE)
    params = sd_importer.load_component(TINY_VAE, "vae")
    images = first_images("shapes", "train", 8)
    q = jax.jit(lambda p, x: vae.apply({"params": p}, x, method="encode"))(params, images)
    moments = np.stack([cached[j]["image"] for j in range(8)])
    np.testing.assert_allclose(moments[..., :4], q.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(moments[..., 4:], q.logvar, rtol=1e-4, atol=1e-4)

    result = launch_one_device(*common, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    _, method, state = restore_run(workdir, parallel.make_mesh(jax.devices()[:1]))
    assert method.noise_shape == (8, 8, 4) and scale == 0.18215
    assert float(state.aux["scale"]) == np.float32(0.18215)
    for a, b in zip(jax.tree.leaves(state.aux["autoencoder"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    samples = np.load(os.path.join(workdir, "samples", "step_4.npz"))["images"]
    assert samples.shape == (4, 16, 16, 3) and np.isfinite(samples).all()


def test_a_released_vae_needs_its_weights_before_anything_runs(tmp_path):
    """latent.vae without latent.vae_dir: exit status 2 and one line, nothing trained."""
    result = launch_one_device("--config=configs/flow/imagenet256_sit_xl2.py",
                               f"--workdir={tmp_path}", "--config.data.data_dir=/nonexistent")
    assert result.returncode == 2
    assert "latent.vae_dir" in result.stderr.strip().splitlines()[-1]
