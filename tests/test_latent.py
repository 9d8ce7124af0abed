"""Latent diffusion end to end through the launcher: train the KL autoencoder on digits, train
EDM on its latents (cached once), sample decoded digits; the autoencoder reconstructs."""
import os

import jax
import numpy as np
import pytest

from helpers import launch_one_device, random_params

from configs.autoencoder import digits as ae_digits
from configs.autoencoder import shapes as ae_shapes
from configs.latent import digits_edm, shapes_text_edm
from diffusion_jax import builders, parallel
from diffusion_jax.data import cache as data_cache
from diffusion_jax.data import digits
from diffusion_jax.data.datasets import ArraySource, _identity_example
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods.latent import LatentDiffusion
from diffusion_jax.runs import restore_run

AE = ["--config=configs/autoencoder/digits.py", "--config.model.ch=16",
      "--config.model.attention=False", "--config.training.num_steps=150",
      "--config.training.batch_size=64", "--config.training.checkpoint_every=150",
      "--config.training.log_every=100", "--config.training.ema_decay=0.9",
      "--config.optim.lr=2e-3", "--config.optim.warmup_steps=0",
      "--config.sampling.num_samples=8", "--config.sampling.batch_size=8"]
LATENT = ["--config=configs/latent/digits_edm.py", "--config.model.nf=16",
          "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
          "--config.training.num_steps=20", "--config.training.batch_size=32",
          "--config.training.checkpoint_every=20", "--config.training.log_every=10",
          "--config.latent.scale_examples=256", "--config.sampling.num_samples=8",
          "--config.sampling.batch_size=8", "--config.sampling.num_steps=4"]


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ae"))
    result = launch_one_device(*AE, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_autoencoder_reconstructs_digits_after_a_short_run(autoencoder_run):
    _, method, state = restore_run(autoencoder_run, parallel.make_mesh(jax.devices()[:1]))
    train, _ = digits.load_digits_arrays("train")
    test, _ = digits.load_digits_arrays("test")
    reconstruction = np.asarray(jax.jit(method.reconstruct)(state.ema_params, test))
    mse = float(np.mean((reconstruction - test) ** 2))
    baseline = float(np.mean((train.mean(axis=0) - test) ** 2))  # the mean training digit
    print(f"test MSE {mse:.4f}, mean-image baseline {baseline:.4f}")
    assert mse < 0.2 * baseline, (mse, baseline)
    samples = np.load(os.path.join(autoencoder_run, "samples", "step_150.npz"))["images"]
    assert samples.shape == (8, 8, 8, 1) and np.isfinite(samples).all()  # decoded prior noise


@pytest.mark.slow
def test_latent_edm_trains_on_cached_latents_and_samples_digits(autoencoder_run, tmp_path):
    workdir, cache = str(tmp_path / "latent"), str(tmp_path / "cache")
    args = [*LATENT, f"--workdir={workdir}", f"--config.latent.autoencoder_workdir={autoencoder_run}",
            f"--config.latent.cache_dir={cache}"]
    result = launch_one_device(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    cached = data_cache.CachedSource(os.path.join(cache, "digits_train_latent_moments"))
    assert len(cached) == 1500 and cached[0]["image"].shape == (4, 4, 4)
    samples = np.load(os.path.join(workdir, "samples", "step_20.npz"))["images"]
    assert samples.shape == (8, 8, 8, 1) and np.isfinite(samples).all()
    config, method, state = restore_run(workdir, parallel.make_mesh(jax.devices()[:1]))
    assert method.noise_shape == (4, 4, 2) and method.image_shape == (8, 8, 1)
    _, _, ae_state = restore_run(autoencoder_run, parallel.make_mesh(jax.devices()[:1]))
    for a, b in zip(jax.tree.leaves(state.aux["autoencoder"]), jax.tree.leaves(ae_state.ema_params)):
        np.testing.assert_array_equal(a, b)  # the frozen autoencoder, checkpointed with the run
    z = np.asarray(jax.jit(lambda p, x, k: method.encode(state.aux, x, k))(
        None, digits.load_digits_arrays("train")[0][:256], jax.random.key(0)))
    assert abs(z.std() - 1.0) < 0.1  # latents scaled to unit variance


def test_latent_config_needs_a_trained_autoencoder(tmp_path):
    config = digits_edm.get_config()
    config.latent.autoencoder_workdir = str(tmp_path)
    with pytest.raises(ConfigError, match="config.json"):
        builders.build_method(config)


def test_training_from_the_latent_cache_equals_encoding_each_batch(tmp_path):
    ae_config = ae_digits.get_config()
    ae_config.model.update(ch=8, attention=False)
    autoencoder = builders.build_method(ae_config)
    config = digits_edm.get_config()
    config.model.update(nf=8, ch_mult=(1,), attn_resolutions=())
    inner = builders.METHODS["edm"](config, builders.build_model(config), autoencoder.noise_shape)
    direct = LatentDiffusion(inner=inner, autoencoder=autoencoder, autoencoder_workdir="")
    cached = LatentDiffusion(inner=inner, autoencoder=autoencoder, autoencoder_workdir="",
                             cache_dir=str(tmp_path))
    params = random_params(jax.eval_shape(direct.init_params, jax.random.key(0)))
    aux = {"autoencoder": random_params(jax.eval_shape(autoencoder.init_params,
                                                       jax.random.key(1)), seed=1),
           "scale": np.float32(2.0)}
    images = digits.load_digits_arrays("train")[0][:8]
    source = ArraySource(images, np.zeros(8, np.int32))
    spec = cached.latent_cache()
    cached_source, cached_decode = data_cache.cached_source(
        spec.path, lambda x: spec.encode(aux, x), spec.example_shape, source, _identity_example)
    moments = np.stack([cached_decode(cached_source[i])[0] for i in range(8)])
    labels = np.zeros(8, np.int32)
    rng = jax.random.key(2)

    @jax.jit
    def losses(params, aux):
        return (direct.loss(params, {"image": images, "label": labels}, rng, aux, 0)[0],
                cached.loss(params, {"image": moments, "label": labels}, rng, aux, 0)[0],
                direct.posterior_moments(aux, images))

    from_images, from_cache, fresh_moments = losses(params, aux)
    np.testing.assert_allclose(moments, fresh_moments, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_cache, from_images, rtol=1e-4)


def test_text_to_image_latent_diffusion_builds_and_traces(tmp_path):
    """The latent text config on an autoencoder run's config.json: caption-conditional EDM on
    8x8x4 latents whose loss and guided sampler trace (shapes only, nothing compiled)."""
    from diffusion_jax import workdir as workdir_io

    ae_config = ae_shapes.get_config()
    workdir_io.write_config(str(tmp_path), ae_config)
    config = shapes_text_edm.get_config()
    config.latent.autoencoder_workdir = str(tmp_path)
    config.model.update(ch=16, num_heads=2)
    method = builders.build_method(config)
    assert method.noise_shape == (8, 8, 4) and method.image_shape == (16, 16, 3)
    assert method.caption_length == 32
    params = jax.eval_shape(method.init_params, jax.random.key(0))
    aux = jax.eval_shape(method.init_aux, params, jax.random.key(1))
    batch = {"image": jax.ShapeDtypeStruct((4, 16, 16, 3), np.float32),
             "label": jax.ShapeDtypeStruct((4, 32), np.int32)}
    loss, _ = jax.eval_shape(lambda p, b, a: method.loss(p, b, jax.random.key(2), a, 0),
                             params, batch, aux)
    assert loss.shape == ()
    images, _ = jax.eval_shape(lambda p, a, c: method.sample(
        p, jax.random.key(3), np.zeros((4, 8, 8, 4), np.float32), c, aux=a,
        sampler=method.sampler(num_steps=2, guidance_scale=3.0,
                               negative_prompt="a blue circle on the left")), params, aux,
        batch["label"])
    assert images.shape == (4, 16, 16, 3)


def test_latent_loss_and_sampler_scale_encode_and_decode_by_value():
    """LatentDiffusion's two jobs written out: training runs the inner loss on s (mean + std n)
    of q(z | x), sampling decodes D(z / s) of the inner sampler's latents. s = 2 here, so a
    missing or inverted scale shows (the negative control: the loss on unscaled latents)."""
    ae_config = ae_digits.get_config()
    ae_config.model.update(ch=8, attention=False)
    autoencoder = builders.build_method(ae_config)
    config = digits_edm.get_config()
    config.model.update(nf=8, ch_mult=(1,), attn_resolutions=())
    inner = builders.METHODS["edm"](config, builders.build_model(config), autoencoder.noise_shape)
    latent = LatentDiffusion(inner=inner, autoencoder=autoencoder, autoencoder_workdir="")
    params = random_params(jax.eval_shape(latent.init_params, jax.random.key(0)))
    ae_params = random_params(jax.eval_shape(autoencoder.init_params, jax.random.key(1)), seed=1)
    aux = {"autoencoder": ae_params, "scale": np.float32(2.0)}
    images = digits.load_digits_arrays("train")[0][:8]
    batch = {"image": images, "label": np.zeros(8, np.int32)}
    rng, noise = jax.random.key(2), np.random.default_rng(5).standard_normal((4, 4, 4, 2))
    sampler = inner.sampler(num_steps=3)

    @jax.jit
    def run(params):
        encode_rng, inner_rng = jax.random.split(rng)
        q = autoencoder.encode(ae_params, images)
        z = q.mean + q.std * jax.random.normal(encode_rng, q.mean.shape)
        inner_loss = lambda zz: inner.loss(params, dict(batch, image=zz), inner_rng, {}, 0)[0]
        z_inner, _ = inner.sample(params, jax.random.key(3), noise, aux={}, sampler=sampler)
        sample, _ = latent.sample(params, jax.random.key(3), noise, aux=aux, sampler=sampler)
        return (latent.loss(params, batch, rng, aux, 0)[0], inner_loss(2.0 * z), inner_loss(z),
                sample, autoencoder.decode(ae_params, z_inner / 2.0))

    loss, expected, unscaled, sample, decoded = run(params)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert abs(float(unscaled) - float(expected)) > 1e-2 * abs(float(expected))
    np.testing.assert_allclose(sample, decoded, rtol=1e-5, atol=1e-6)
