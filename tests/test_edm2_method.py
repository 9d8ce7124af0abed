"""The EDM2 method (Karras et al. 2024): the uncertainty-weighted loss by value, its noise
levels, the inverse-square-root learning rate of NVlabs/edm2, forced weight normalisation
through the method protocol, the latent normalisation and the paper configs' parameter
counts."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import base
from configs.edm2 import (digits, img512_l, img512_m, img512_s, img512_xl, img512_xs,
                          img512_xxl, img64_s)
from diffusion_jax import builders, preconditioning
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods.autoencoder import Autoencoder
from diffusion_jax.methods.edm2 import EDM2, noise_levels_and_noise, uncertainty_loss
from diffusion_jax.methods.latent import EDM2_RAW_MEAN, EDM2_RAW_STD, LatentDiffusion
from diffusion_jax.model_size import count_params
from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.training.loop import initial_state
from diffusion_jax.training.optim import learning_rate_schedule, make_optimizer
from diffusion_jax.training.step import jit_train_step, train_step

SCHEME = preconditioning.EDMPrecond(sigma_data=0.5, P_mean=-0.4, P_std=1.0)
A, B, C = 0.7, -0.3, 0.2  # the stand-in network: F = A x_in, u = B c_noise + C


class StandIn(nn.Module):
    """F(x_in, c_noise) = a x_in and u(c_noise) = b c_noise + c, with (a, b, c) = (A, B, C)."""

    @nn.compact
    def __call__(self, x, t, cond=None, train=False, return_logvar=False):
        a, b, c = (self.param(k, nn.initializers.constant(v), ()) for k, v in
                   (("a", A), ("b", B), ("c", C)))
        return (a * x, b * t + c) if return_logvar else a * x


def numpy_loss(y, sigma, n, per_pixel_u=True):
    """EDM2Loss of NVlabs, summed over the data dimensions, batch mean; `per_pixel_u` False is
    the paper's formula with u added once per example (the negative control)."""
    sd = 0.5
    s = sigma.reshape(-1, 1, 1, 1).astype(np.float64)
    x = y + s * n
    c_in, c_skip, c_out = 1 / np.sqrt(s**2 + sd**2), sd**2 / (s**2 + sd**2), s * sd / np.sqrt(
        s**2 + sd**2)
    D = c_skip * x + c_out * A * c_in * x
    u = B * np.log(s) / 4 + C
    weight = (s**2 + sd**2) / (s * sd) ** 2
    err = (weight / np.exp(u) * (D - y) ** 2).sum(axis=(1, 2, 3))
    count = np.prod(y.shape[1:]) if per_pixel_u else 1
    return np.mean(err + count * u[:, 0, 0, 0]), np.mean(weight[:, 0, 0, 0] * ((D - y) ** 2).sum(
        axis=(1, 2, 3)))


def test_loss_equals_nvlabs_edm2loss_with_the_uncertainty_in_every_element():
    method = EDM2(model=StandIn(), image_shape=(4, 4, 2), scheme=SCHEME)
    params = method.init_params(jax.random.key(0))
    y = np.random.default_rng(0).uniform(-1, 1, (16, 4, 4, 2)).astype(np.float32)
    rng = jax.random.key(3)
    loss, metrics = method.loss(params, {"image": jnp.asarray(y)}, rng)
    sigma, n = noise_levels_and_noise(SCHEME, jax.random.split(rng, 3)[0], y.shape)
    expected, edm = numpy_loss(y, np.asarray(sigma), np.asarray(n, np.float64))
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["edm_loss"]), edm, rtol=2e-5)
    # negative control: u once per example, as Eq. 21 reads, is a different number
    once, _ = numpy_loss(y, np.asarray(sigma), np.asarray(n, np.float64), per_pixel_u=False)
    assert abs(once - expected) > 1e-2 * abs(expected)


def test_the_uncertainty_term_is_minimised_at_the_log_of_the_weighted_mean_error():
    # d/du [w e^-u S + N u] = 0 at u = ln(w S / N): the learned u tracks the weighted error
    rng = np.random.default_rng(1)
    y, d = rng.normal(size=(2, 3, 4, 4, 1)).astype(np.float32)
    weight = np.array([2.0, 0.5, 1.0], np.float32)
    best = np.log(weight * ((d - y) ** 2).mean(axis=(1, 2, 3)))
    grad = jax.grad(lambda u: uncertainty_loss(d, y, weight, u).sum())
    np.testing.assert_allclose(grad(jnp.asarray(best)), 0.0, atol=1e-4)
    assert np.abs(np.asarray(grad(jnp.asarray(best + 0.5)))).min() > 1.0  # negative control


def test_noise_levels_are_lognormal_with_the_schemes_mean_and_std():
    sigma, n = noise_levels_and_noise(SCHEME, jax.random.key(0), (20_000, 1, 1, 1))
    log_sigma = np.log(np.asarray(sigma))
    se = 1.0 / np.sqrt(len(log_sigma))
    assert abs(log_sigma.mean() - SCHEME.P_mean) < 4 * se * SCHEME.P_std
    assert abs(log_sigma.std() - SCHEME.P_std) < 4 * se * SCHEME.P_std
    assert abs(log_sigma.mean() - (-1.2)) > 4 * se * SCHEME.P_std  # EDM's P_mean is rejected
    assert abs(float(np.asarray(n).std()) - 1.0) < 4 * se


def nvlabs_learning_rate(cur_nimg, batch_size, ref_lr, ref_batches, rampup_Mimg):
    """NVlabs/edm2 training/training_loop.py learning_rate_schedule, verbatim."""
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr


def test_inverse_sqrt_schedule_equals_nvlabs_in_images():
    config = img512_xs.get_config()
    schedule = learning_rate_schedule(config.optim, config.training.batch_size)
    steps = [0, 1, 2000, 4882, 4883, 70_000, 70_001, 140_000, 1_000_000]
    got = np.array([float(schedule(k)) for k in steps])
    expected = np.array([nvlabs_learning_rate(k * 2048, 2048, 0.0120, 70_000, 10)
                         for k in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] == 0.0 and got[-1] == pytest.approx(0.012 / np.sqrt(1e6 / 7e4))
    constant = learning_rate_schedule(ml_collections.ConfigDict(
        dict(config.optim.to_dict(), schedule="constant")))
    assert not np.allclose([float(constant(k)) for k in steps], expected)  # negative control
    with pytest.raises(ConfigError, match="batch size"):
        learning_rate_schedule(config.optim)


def test_default_schedule_is_the_warmup_then_constant_one_and_unknown_names_fail():
    optim = base.base_config().optim
    schedule = learning_rate_schedule(optim)
    assert float(schedule(0)) == 0.0 and float(schedule(2500)) == pytest.approx(1e-4)
    assert float(schedule(optim.warmup_steps)) == float(schedule(10**6)) == pytest.approx(
        optim.lr)
    optim.schedule = "cosine"
    with pytest.raises(ConfigError, match="optim.schedule"):
        make_optimizer(optim)


def tiny_config():
    config = digits.get_config()
    config.model.update(model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=())
    return config


def weight_rms(params):
    """RMS per output channel of every MP weight (leaf named `weight`), concatenated."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return np.concatenate([np.sqrt(np.mean(np.square(np.asarray(w)).reshape(-1, w.shape[-1]),
                                           axis=0))
                           for path, w in flat if path[-1].key == "weight"])


@pytest.mark.slow
def test_weights_are_renormalised_after_each_optimiser_step():
    config = tiny_config()
    method = builders.build_method(config)
    mesh = builders.build_mesh(config)
    optimizer = optax.adam(0.3)  # large steps, no warm-up: the norms move
    state = initial_state(method, optimizer, 0, mesh)
    # gains 1 instead of 0, so every weight has a gradient (orthogonal to it: Adam grows it)
    ones = lambda path, x: jnp.ones_like(x) if path[-1].key.endswith("gain") else x  # noqa: E731
    state = state.replace(params=jax.tree_util.tree_map_with_path(ones, state.params))
    batch = {"image": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)),
                                  jnp.float32), "label": jnp.zeros((8,), jnp.int32)}
    # negative control: the same step without the hook leaves the norms off 1
    raw, _ = jax.jit(lambda s, b: train_step(s, b, loss_fn=method.loss, optimizer=optimizer,
                                             ema_decay=0.9))(state, batch)
    assert np.abs(weight_rms(raw.params) - 1.0).max() > 1e-2
    start = jax.tree.map(np.asarray, state.ema_params)
    stepped, _ = jit_train_step(method, optimizer, 0.9, mesh)(state, batch)
    np.testing.assert_allclose(weight_rms(stepped.params), 1.0, atol=1e-3)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    for got, want in zip(leaves(stepped.params), leaves(method.constrain_params(raw.params))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the EMA averages the optimiser's output before the normalisation (NVlabs' order)
    ema = jax.tree.map(lambda p, r: 0.9 * p + 0.1 * r, start, raw.params)
    for got, want in zip(leaves(stepped.ema_params), leaves(ema)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class DoubledInit(EDM2):
    """EDM2 whose initial weights are twice unit norm."""

    def init_params(self, rng):
        return jax.tree.map(lambda w: 2.0 * w, super().init_params(rng))


@pytest.mark.slow
def test_fresh_parameters_are_constrained_and_latent_diffusion_forwards_the_hook():
    config = tiny_config()
    edm2 = builders.build_method(config)
    method = DoubledInit(**{f.name: getattr(edm2, f.name) for f in dataclasses.fields(edm2)})
    state = initial_state(method, optax.adam(1e-3), 0, builders.build_mesh(config))
    np.testing.assert_allclose(weight_rms(state.params), 1.0, atol=1e-3)  # not 2
    latent = LatentDiffusion(inner=edm2, autoencoder=None, autoencoder_workdir="")
    doubled = jax.tree.map(lambda w: 2.0 * w, state.params)
    np.testing.assert_allclose(weight_rms(latent.constrain_params(doubled)), 1.0, atol=1e-3)
    plain = builders.build_method(tiny_edm_config())  # EDM keeps the default: unchanged
    assert plain.constrain_params(doubled) is doubled


def tiny_edm_config():
    from configs.edm import digits as edm_digits

    return edm_digits.get_config()


def latent_method(scaling, z_channels=4):
    autoencoder = Autoencoder(model=AutoencoderKL(ch=4, ch_mult=(1,), z_channels=z_channels,
                                                  attention=False), image_shape=(4, 4, 1))
    inner = builders.build_method(tiny_config())
    inner = dataclasses.replace(inner, image_shape=autoencoder.noise_shape)
    return LatentDiffusion(inner=inner, autoencoder=autoencoder, autoencoder_workdir="",
                           scaling=scaling)


def test_edm2_latent_scaling_normalises_sd_vae_channel_statistics_to_std_half():
    method = latent_method("edm2")
    aux = method.init_aux(None, jax.random.key(0))
    assert "calibration" not in method.requirements()
    rng = np.random.default_rng(0)
    z = (np.asarray(EDM2_RAW_MEAN) + np.asarray(EDM2_RAW_STD)
         * rng.standard_normal((4096, 4, 4, 4))).astype(np.float32)  # (B, h, w, 4)
    normalized = np.asarray(method.normalize(aux, jnp.asarray(z))).reshape(-1, 4)
    se = 1.0 / np.sqrt(len(normalized))
    assert np.all(np.abs(normalized.mean(0)) < 4 * se * 0.5)
    assert np.all(np.abs(normalized.std(0) - 0.5) < 4 * se * 0.5)
    np.testing.assert_allclose(method.denormalize(aux, method.normalize(aux, z)), z, rtol=1e-5,
                               atol=1e-5)
    # negative control: SD's single factor 0.18215 leaves means far from 0, stds far from 0.5
    sd = 0.18215 * z.reshape(-1, 4)
    assert np.abs(sd.mean(0)).max() > 4 * se * 0.5 and np.abs(sd.std(0) - 0.5).max() > 0.1


def test_std_scaling_is_unchanged_and_edm2_needs_four_latent_channels():
    method = latent_method("std", z_channels=4)
    aux = method.init_aux(None, jax.random.key(0))
    assert "calibration" in method.requirements() and set(aux) == {"autoencoder", "scale"}
    z = jnp.ones((1, 4, 4, 4))
    np.testing.assert_allclose(method.normalize(dict(aux, scale=2.0), z), 2.0 * z)
    with pytest.raises(ConfigError, match="4 channels"):
        latent_method("edm2", z_channels=2)
    with pytest.raises(ConfigError, match="latent.scaling"):
        latent_method("sd")


def test_a_latent_scale_with_edm2_scaling_is_a_config_error_and_the_vae_factor_is_not_kept():
    config = img512_xs.get_config()
    assert builders.build_method(config).fixed_scale == 0.0  # not the VAE's 0.18215
    config.latent.scale = 0.18215
    with pytest.raises(ConfigError, match="no effect with latent.scaling='edm2'"):
        builders.build_method(config)
    config.latent.scaling = "std"
    assert builders.build_method(config).fixed_scale == pytest.approx(0.18215)


def test_edm2_needs_the_mp_unet():
    config = digits.get_config()
    config.model = tiny_edm_config().model
    with pytest.raises(ConfigError, match="edm2_unet"):
        builders.build_method(config)


# Karras et al. 2024, Table 2 (millions) and the exact counts of NVlabs' Precond
# (tests/test_edm2_unet.py OFFICIAL_COUNTS).
PAPER_COUNTS = [(img512_xs, 124.7e6, 124_713_253), (img512_s, 280.2e6, 280_212_837),
                (img512_m, 497.8e6, 497_807_781), (img512_l, 777.5e6, 777_498_085),
                (img512_xl, 1119.3e6, 1_119_283_749), (img512_xxl, 1523.2e6, 1_523_164_773),
                (img64_s, 280.2e6, 280_209_381)]


@pytest.mark.parametrize("module,published,exact", PAPER_COUNTS,
                         ids=[m.__name__.split(".")[-1] for m, _, _ in PAPER_COUNTS])
def test_paper_configs_build_the_published_parameter_counts(module, published, exact):
    method = builders.build_method(module.get_config())
    count = count_params(jax.eval_shape(method.init_params, jax.random.key(0)))
    assert abs(count - published) < 1e-3 * published and count == exact
