"""Loss weightings as functions of SNR, in closed form against the papers' statements."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import weighting
from diffusion_jax.processes import parameterization

SNR = jnp.array([1e-4, 0.04, 0.5, 1.0, 4.9, 5.0, 5.1, 40.0, 1e4])


@pytest.mark.parametrize("target", ["epsilon", "x0", "v"])
def test_min_snr_gamma_is_the_papers_weight_per_target(target):
    """Hang et al. 2023: min(SNR, gamma) for x0, min(SNR, gamma) / SNR for epsilon,
    min(SNR, gamma) / (SNR + 1) for v."""
    expected = {"x0": jnp.minimum(SNR, 5.0), "epsilon": jnp.minimum(SNR, 5.0) / SNR,
                "v": jnp.minimum(SNR, 5.0) / (SNR + 1.0)}[target]
    np.testing.assert_allclose(weighting.min_snr_weight(SNR, target, gamma=5.0), expected,
                               rtol=1e-6)
    # epsilon: 1 below gamma (the simple loss), gamma / SNR above
    eps = weighting.min_snr_weight(SNR, "epsilon", gamma=5.0)
    np.testing.assert_allclose(eps[SNR <= 5.0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(eps[SNR > 5.0], 5.0 / SNR[SNR > 5.0], rtol=1e-6)


@pytest.mark.parametrize("k,gamma", [(1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (0.1, 2.0)])
def test_p2_weight_on_epsilon_is_one_over_k_plus_snr_to_the_gamma(k, gamma):
    """Choi et al. 2022: lambda' = 1 / (k + SNR)^gamma on the simple (epsilon) loss; gamma = 0 is
    the simple loss; in x0 terms SNR / (k + SNR)^gamma."""
    np.testing.assert_allclose(weighting.p2_weight(SNR, "epsilon", k, gamma),
                               1.0 / (k + SNR) ** gamma, rtol=1e-6)
    np.testing.assert_allclose(weighting.p2_weight(SNR, "x0", k, gamma),
                               SNR / (k + SNR) ** gamma, rtol=1e-6)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_weight_is_lambda_of_sigma(sigma_data):
    """Karras et al. 2022, Table 1: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    on the denoiser (x0) error, at sigma = 1 / sqrt(SNR)."""
    sigma = 1.0 / jnp.sqrt(SNR)
    expected = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    np.testing.assert_allclose(weighting.edm_weight(SNR, "x0", sigma_data), expected, rtol=1e-5)
    np.testing.assert_allclose(weighting.snr_of_sigma(sigma), SNR, rtol=1e-5)


def test_snr_plus_one_is_the_plain_v_loss_and_edm_at_unit_sigma_data():
    np.testing.assert_allclose(weighting.snr_plus_one_weight(SNR, "v"), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weighting.snr_plus_one_weight(SNR, "x0"), SNR + 1.0, rtol=1e-6)
    np.testing.assert_allclose(weighting.snr_plus_one_weight(SNR, "epsilon"),
                               weighting.edm_weight(SNR, "epsilon", sigma_data=1.0), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(set(weighting.WEIGHTINGS) - {"uniform"}))
def test_a_weighting_gives_the_same_loss_for_every_target(name):
    """w_target ||target error||^2 is the same number for epsilon, x0 and v predictions that make
    the same x0 error (through parameterization.to_x0); negative control: the unweighted errors
    ('uniform') differ."""
    rng = np.random.default_rng(0)
    alpha_bar = jnp.asarray(rng.uniform(0.01, 0.99, 16))
    alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    x0, eps, x0_err = (jnp.asarray(rng.standard_normal((16, 3))) for _ in range(3))
    x_t = alpha[:, None] * x0 + sigma[:, None] * eps
    x0_hat = x0 + x0_err
    snr = weighting.snr_of_alpha_bar(alpha_bar)
    losses, plain = [], []
    for target in ("epsilon", "x0", "v"):
        # the target-space prediction that decodes to x0_hat
        pred = parameterization.target(target, x0_hat,
                                       parameterization.to_eps("x0", x0_hat, x_t, alpha, sigma),
                                       alpha, sigma)
        np.testing.assert_allclose(parameterization.to_x0(target, pred, x_t, alpha, sigma), x0_hat,
                                   rtol=1e-4, atol=1e-4)
        error = jnp.sum((pred - parameterization.target(target, x0, eps, alpha, sigma)) ** 2, -1)
        losses.append(weighting.loss_weight(name, snr, target) * error)
        plain.append(error)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-3)
    assert not np.allclose(plain[0], plain[1], rtol=1e-1)


def test_unknown_names_raise_config_errors():
    with pytest.raises(ConfigError, match="min_snr, p2"):
        weighting.loss_weight("truncated_snr", SNR, "epsilon")
    with pytest.raises(ConfigError, match="epsilon, x0, v"):
        weighting.min_snr_weight(SNR, "score")


def test_weights_are_jittable():
    jitted = jax.jit(lambda snr: weighting.loss_weight("min_snr", snr, "v", gamma=5.0))
    np.testing.assert_allclose(jitted(SNR), jnp.minimum(SNR, 5.0) / (SNR + 1.0), rtol=1e-6)
