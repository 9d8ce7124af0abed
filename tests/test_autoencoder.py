"""The KL autoencoder: its posterior's KL term, shapes, and the method's loss terms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params

from configs.autoencoder import digits as ae_digits
from diffusion_jax import builders, runs
from diffusion_jax.errors import ConfigError
from diffusion_jax.models.autoencoder import DiagonalGaussian


def _posterior(seed=0, shape=(3, 4, 4, 2)):
    rng = np.random.default_rng(seed)
    return DiagonalGaussian(jnp.asarray(rng.standard_normal(shape), jnp.float32),
                            jnp.asarray(0.8 * rng.standard_normal(shape), jnp.float32))


def test_kl_equals_the_closed_form_of_diagonal_gaussians():
    q = _posterior()
    mu, var = np.asarray(q.mean, np.float64), np.exp(np.asarray(q.logvar, np.float64))
    # KL(N(mu, var) || N(0, 1)) per dimension = log(1 / sigma) + (var + mu^2) / 2 - 1 / 2
    expected = (-0.5 * np.log(var) + 0.5 * (var + mu ** 2) - 0.5).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(jax.jit(DiagonalGaussian.kl)(q), expected, rtol=1e-5)


def test_kl_matches_a_monte_carlo_estimate():
    q = _posterior(seed=1, shape=(2, 2, 2, 2))
    n = 200_000

    @jax.jit
    def monte_carlo(q):  # E_q[log q(z) - log p(z)] and its standard error
        z = q.mean[None] + q.std[None] * jax.random.normal(jax.random.key(2), (n,) + q.mean.shape)
        log_q = -0.5 * (((z - q.mean) / q.std) ** 2 + q.logvar + jnp.log(2 * jnp.pi))
        log_p = -0.5 * (z ** 2 + jnp.log(2 * jnp.pi))
        per_sample = jnp.sum(log_q - log_p, axis=(2, 3, 4))  # (n, B)
        return per_sample.mean(0), per_sample.std(0) / np.sqrt(n), q.kl()

    estimate, stderr, closed_form = monte_carlo(q)
    assert np.all(np.abs(np.asarray(estimate - closed_form)) < 4 * np.asarray(stderr) + 1e-3)


def test_posterior_samples_have_its_mean_and_std():
    q = _posterior(seed=3, shape=(1, 2, 2, 1))
    z = jax.jit(lambda q: jax.vmap(q.sample)(jax.random.split(jax.random.key(4), 20_000)))(q)
    np.testing.assert_allclose(z.mean(0), q.mean, atol=4 * float(q.std.max()) / np.sqrt(20_000))
    np.testing.assert_allclose(z.std(0), q.std, rtol=0.03)
    np.testing.assert_array_equal(q.mode(), q.mean)


def _tiny_method(**autoencoder):
    config = ae_digits.get_config()
    config.model.update(ch=8, attention=False)
    config.autoencoder.update(autoencoder)
    return builders.build_method(config)


def _independent_terms(method, params, x, rng):
    """Each loss term written out in numpy from the posterior moments and the decoding of the
    posterior sample z = mean + std n with the loss's own noise n (DiagonalGaussian.sample)."""
    q = method.encode(params, x)
    mean, logvar = np.asarray(q.mean, np.float64), np.asarray(q.logvar, np.float64)
    noise = np.asarray(jax.random.normal(rng, q.mean.shape), np.float64)
    z = jnp.asarray(mean + np.exp(0.5 * logvar) * noise, jnp.float32)
    x_rec = np.asarray(method.decode(params, z), np.float64)
    l1 = np.abs(x - x_rec).sum(axis=(1, 2, 3)).mean()
    kl = (0.5 * (mean ** 2 + np.exp(logvar) - 1 - logvar)).sum(axis=(1, 2, 3)).mean()
    return x_rec, l1, kl


@pytest.mark.slow
def test_loss_terms_by_value_and_decoded_prior_samples():
    method = _tiny_method(kl_weight=0.5, perceptual_weight=2.0)
    assert method.noise_shape == (4, 4, 2)
    params = random_params(jax.eval_shape(method.init_params, jax.random.key(0)))
    x = np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)

    aux = runs.resolve(method.requirements(), None, {})  # the shipped digits classifier

    @jax.jit
    def run(params):
        batch = {"image": x, "label": jnp.zeros(4, jnp.int32)}
        return (method.loss(params, batch, jax.random.key(2), aux, 0),
                method.reconstruct(params, x),
                method.sample(params, jax.random.key(3), jnp.zeros((2, 4, 4, 2)))[0])

    (loss, metrics), reconstruction, samples = run(params)
    x_rec, l1, kl = _independent_terms(method, params, x, jax.random.key(2))
    from diffusion_jax.evaluation.digits_features import DigitsClassifier
    features = lambda v: np.asarray(DigitsClassifier().apply(  # noqa: E731
        {"params": aux["perceptual"]}, jnp.asarray(v, jnp.float32))[0], np.float64)
    perceptual = np.square(features(x) - features(x_rec)).sum(axis=-1).mean()
    np.testing.assert_allclose(metrics["reconstruction"], l1, rtol=1e-4)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-4)
    np.testing.assert_allclose(metrics["perceptual"], perceptual, rtol=1e-3)
    np.testing.assert_allclose(loss, l1 + 0.5 * kl + 2.0 * perceptual, rtol=1e-3)
    assert perceptual > 1e-3  # random weights reconstruct badly: the term is not trivially 0
    # the reconstruction decodes the posterior mean, not a sample
    mean = method.encode(params, x).mean
    np.testing.assert_allclose(reconstruction, method.decode(params, mean), rtol=1e-5, atol=1e-6)
    assert not np.allclose(reconstruction, x_rec, atol=1e-4)
    assert samples.shape == (2, 8, 8, 1)


@pytest.mark.slow
def test_lpips_perceptual_term_reads_its_weights_file(tmp_path):
    from diffusion_jax.losses import lpips

    with pytest.raises(ConfigError, match="autoencoder.lpips_weights"):
        _tiny_method(perceptual_weight=1.0, perceptual="lpips", lpips_weights=str(tmp_path / "x"))
    shapes = jax.eval_shape(lpips.LPIPS().init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                            jnp.zeros((1, 16, 16, 3)))["params"]
    path = str(tmp_path / "lpips.npz")
    # random weights with non-trivial statistics (positive linear heads, as LPIPS' are), so a
    # distance that ignored its inputs would show
    lpips.save_lpips_params(path, jax.tree.map(np.abs, random_params(shapes, seed=4)))
    method = _tiny_method(perceptual_weight=1.0, perceptual="lpips", lpips_weights=path)
    params = random_params(jax.eval_shape(method.init_params, jax.random.key(0)))
    aux = runs.resolve(method.requirements(), None, {})  # the weights file just written
    x = np.random.default_rng(3).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    batch = {"image": x, "label": jnp.zeros(2, jnp.int32)}
    loss, metrics = jax.jit(lambda p: method.loss(p, batch, jax.random.key(1), aux, 0))(params)
    x_rec, l1, kl = _independent_terms(method, params, x, jax.random.key(1))
    # LPIPS itself is checked against the lpips package in test_reference_outputs.py; here the
    # loss must apply it to (x, the decoded posterior sample), resized to 32x32 for 8x8 images
    distance = lpips.lpips_distance_fn(aux["perceptual"], resize_to=32)
    expected = float(jnp.mean(distance(jnp.asarray(x), jnp.asarray(x_rec, jnp.float32))))
    np.testing.assert_allclose(metrics["perceptual"], expected, rtol=1e-3)
    np.testing.assert_allclose(loss, l1 + 1e-4 * kl + expected, rtol=1e-3)
    assert expected > 0 and not np.isclose(expected, float(jnp.mean(distance(
        jnp.asarray(x), jnp.asarray(-x)))), rtol=1e-2)  # the term depends on the reconstruction
