"""The score-SDE method: network output -> score -> denoiser conversions, every sampler and edit
through the method on the exact score of a Gaussian mixture, bits/dim of Gaussian data, the
paper configs' parameter counts, and digits training / sampling / eval through the launcher."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import edit
from test_pc_ode_samplers import MIXTURE, assert_mixture_statistics, mixture_score

from configs.score_sde import (cifar10_ddpmpp_continuous, cifar10_ddpmpp_deep_continuous,
                               cifar10_ncsnpp_continuous, cifar10_ncsnpp_deep_continuous,
                               cifar10_subvp_ddpmpp_continuous,
                               cifar10_subvp_ddpmpp_deep_continuous, digits_ve, digits_vp)
from diffusion_jax import analytic, builders, launcher, likelihood
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods.score_sde import ScoreSDE
from diffusion_jax.model_size import count_params
from diffusion_jax.processes import sde as sde_lib
from diffusion_jax.samplers import pc

SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(), "ve": sde_lib.VESDE(sigma_max=20.0)}


class ExactNetwork:
    """Stands in for a flax module: outputs what a perfectly trained network of the paper's
    parameterisation outputs for `mixture` data, -sigma(t) score (VP, sub-VP; input 999 t) or
    the score (VE; input sigma(t))."""

    def __init__(self, mixture, sde):
        self.sde, self.score = sde, mixture_score(mixture, sde)

    def init(self, rng, x, t, cond=None):
        return {"params": {}}

    def apply(self, variables, x, c, cond=None, train=False, rngs=None):
        if isinstance(self.sde, sde_lib.VESDE):
            return self.score(x, self.sde.t_of_edm_sigma(c))
        t = c / (self.sde.N - 1)
        return -self.sde.sigma(t)[:, None] * self.score(x, t)


def exact_method(sde, mixture=MIXTURE, **kwargs):
    return ScoreSDE(model=ExactNetwork(mixture, sde), sde=sde, image_shape=(mixture.dim,),
                    **kwargs)


@pytest.mark.parametrize("name", sorted(SDES))
def test_edm_sigma_inverts(name):
    sde = SDES[name]
    t = jnp.linspace(1e-3, 1.0, 7)
    np.testing.assert_allclose(sde.t_of_edm_sigma(sde.edm_sigma(t)), t, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(SDES))
def test_score_and_denoiser_of_the_network_are_exact(name):
    sde = SDES[name]
    method = exact_method(sde)
    x = jax.random.normal(jax.random.key(0), (64, 2)) * 2.0
    t = jnp.linspace(0.05, 0.95, 64)
    np.testing.assert_allclose(
        method.score_fn({})(x, t),
        MIXTURE.vp_score(x, sde.alpha(t), sde.sigma(t)), rtol=1e-3, atol=1e-4)
    for sigma in (0.05, 0.7, 5.0):
        np.testing.assert_allclose(method.conditional_denoiser({})(x, sigma),
                                   MIXTURE.denoiser(x, sigma), rtol=1e-3, atol=1e-4)


SAMPLER_CASES = [
    ("vp", dict(method="pc", num_steps=500), 500),
    ("subvp", dict(method="pc", predictor="reverse_diffusion", num_steps=500), 500),
    ("ve", dict(method="pc", predictor="reverse_diffusion", corrector="langevin", num_steps=500,
                eps=1e-5), 1000),
    ("vp", dict(method="ode", ode_solver="heun", num_steps=100), 200),
    ("subvp", dict(method="heun", num_steps=64), 127),
    ("ve", dict(method="dpm_solver_pp_2m", num_steps=20, eps=1e-5), 20),
]


@pytest.mark.parametrize("name,options,nfe", SAMPLER_CASES)
def test_every_sampler_of_the_method_reproduces_the_mixture(name, options, nfe):
    method = exact_method(SDES[name])
    x_init = jax.random.normal(jax.random.key(1), (2000, 2))
    sampler = method.sampler(**options)
    x, stats = jax.jit(lambda rng: method.sample({}, rng, x_init, sampler=sampler))(
        jax.random.key(2))
    assert int(stats["nfe"]) == nfe
    assert_mixture_statistics(x)


def test_adaptive_ode_reports_its_evaluations():
    method = exact_method(SDES["vp"])
    x_init = jax.random.normal(jax.random.key(3), (2000, 2))
    sampler = method.sampler(method="ode", rtol=1e-4, atol=1e-4)
    x, stats = jax.jit(lambda rng: method.sample({}, rng, x_init, sampler=sampler))(
        jax.random.key(4))
    assert 14 < int(stats["nfe"]) < 1000
    assert_mixture_statistics(x)


GAUSS_MEAN = jnp.array([0.4, -0.3])
GAUSS_COV = jnp.array([[0.5, 0.3], [0.3, 0.4]])


def test_inpainting_keeps_the_known_pixel_and_is_pc_replacement():
    """The conditional distribution of the replacement sampler is checked on exact conditional
    scores in test_pc_ode_samplers; here the method's wiring: mask > 0.5 is known, PC options."""
    method = exact_method(SDES["vp"], analytic.gaussian(GAUSS_MEAN, GAUSS_COV))
    x = jnp.zeros((64, 2)).at[:, 1].set(0.9)
    mask = jnp.broadcast_to(jnp.array([0.0, 1.0]), (64, 2))
    rng = jax.random.key(5)
    out = edit(method, {}, rng, x, mask, task="inpaint", num_steps=50)
    np.testing.assert_array_equal(out[:, 1], x[:, 1])
    assert float(out[:, 0].std()) > 0.1
    direct, _ = pc.pc_replace(method.score_fn({}), method.sde, rng, x, mask > 0.5,
                              num_steps=50)
    np.testing.assert_array_equal(out, direct)


@pytest.mark.parametrize("sampler", ["pc", "ode"])
def test_sdedit_strength_zero_returns_the_input_and_one_samples_the_data(sampler):
    method = exact_method(SDES["subvp"])
    x = jnp.full((2000, 2), 3.0)
    options = dict(method=sampler, num_steps=200, ode_solver="heun", task="sdedit")
    same = edit(method, {}, jax.random.key(6), x, None, strength=0.0, **options)
    np.testing.assert_array_equal(same, x)
    out = jax.jit(lambda rng: edit(method, {}, rng, x, None, strength=1.0, **options))(
        jax.random.key(7))
    assert_mixture_statistics(out)
    half = edit(method, {}, jax.random.key(8), x, None, strength=0.5, **options)
    assert 0 < float(jnp.mean(jnp.abs(half - x))) < float(jnp.mean(jnp.abs(out - x)))


def test_edit_rejects_what_it_cannot_do():
    method = exact_method(SDES["vp"])
    x = jnp.zeros((4, 2))
    with pytest.raises(ConfigError, match="valid: inpaint, sdedit, colorize"):
        edit(method, {}, jax.random.key(0), x, None, task="outpaint")
    with pytest.raises(ConfigError, match="valid: sdedit"):
        edit(method, {}, jax.random.key(0), x, x, task="inpaint", method="ode")
    with pytest.raises(ConfigError, match="valid: inpaint, sdedit"):
        edit(method, {}, jax.random.key(0), x, x, task="outpaint", method="heun")
    with pytest.raises(ConfigError, match="colorize needs RGB"):
        edit(method, {}, jax.random.key(0), x[..., None], None, task="colorize")


def test_fast_sampler_inpainting_through_the_denoiser_keeps_the_known_pixel():
    method = exact_method(SDES["ve"], analytic.gaussian(GAUSS_MEAN, GAUSS_COV))
    x = jnp.zeros((256, 2)).at[:, 1].set(0.9)
    mask = jnp.broadcast_to(jnp.array([False, True]), (256, 2))
    out = edit(method, {}, jax.random.key(11), x, mask, task="inpaint", method="heun",
               num_steps=18, eps=1e-5)
    np.testing.assert_array_equal(out[:, 1], x[:, 1])
    assert float(out[:, 0].std()) > 0.1


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_bits_per_dim_of_gaussian_data_matches_the_analytic_value(name):
    """Exact divergence: the ODE log-likelihood of p_eps (data convolved with the kernel at
    eps) of dequantised test points, converted to bits/dim, within 1% of the closed form."""
    sde, levels, eps = SDES[name], 64, 1e-5
    method = exact_method(sde, analytic.gaussian(GAUSS_MEAN, GAUSS_COV), num_levels=levels)
    x = jnp.clip(jax.random.multivariate_normal(jax.random.key(9), GAUSS_MEAN, GAUSS_COV, (16,)),
                 -1, 1)
    rng = jax.random.key(10)
    bpd, nfe = jax.jit(lambda rng: method.bits_per_dim({}, rng, x, divergence="exact",
                                                       eps=eps))(rng)
    x_deq = likelihood.dequantize(jax.random.split(rng)[0], x, levels)
    a, s = float(sde.alpha(jnp.array(eps))), float(sde.sigma(jnp.array(eps)))
    p_eps = analytic.gaussian(a * GAUSS_MEAN, a**2 * GAUSS_COV + s**2 * jnp.eye(2))
    expected = likelihood.log_likelihood_to_bits_per_dim(p_eps.log_prob(x_deq), 2, levels)
    np.testing.assert_allclose(bpd, expected, rtol=1e-2)
    assert int(nfe) > 0


PAPER_CONFIGS = [(cifar10_ddpmpp_continuous, 61_804_419),
                 (cifar10_subvp_ddpmpp_continuous, 61_804_419),
                 (cifar10_ddpmpp_deep_continuous, 106_632_579),
                 (cifar10_subvp_ddpmpp_deep_continuous, 106_632_579),
                 (cifar10_ncsnpp_continuous, 62_758_915),
                 (cifar10_ncsnpp_deep_continuous, 107_587_075)]


@pytest.mark.parametrize("module,expected", PAPER_CONFIGS,
                         ids=[m.__name__.rsplit(".", 1)[1] for m, _ in PAPER_CONFIGS])
def test_paper_configs_build_the_paper_networks(module, expected):
    method = builders.build_method(module.get_config())
    params = jax.eval_shape(method.init_params, jax.random.key(0))
    assert count_params(params) == expected


def test_config_errors_are_one_line_config_errors():
    for key, value, match in [("sde.name", "cld", "unknown SDE"),
                              ("sampling.predictor", "rk4", "unknown predictor"),
                              ("sampling.method", "ddpm", "unknown sampler"),
                              ("sde.importance_weighting", True, "likelihood_weighting")]:
        config = digits_vp.get_config()
        section, name = key.split(".")
        config[section][name] = value
        with pytest.raises(ConfigError, match=match):
            builders.build_method(config)


def _tiny(module, steps=30):
    config = module.get_config()
    config.model.update(nf=8, attn_resolutions=())
    config.training.update(num_steps=steps, batch_size=32, checkpoint_every=steps,
                           log_every=10, sample_at_end=True)
    config.optim.update(warmup_steps=0, lr=2e-3)
    config.sampling.update(num_samples=8, batch_size=8, num_steps=40)
    config.eval.update(num_samples=16, batch_size=8, num_reference=64, bpd_num_examples=12,
                       bpd_batch_size=8, bpd_rtol=1e-3, bpd_atol=1e-3)
    return config


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow
def test_digits_vp_trains_samples_and_reports_bits_per_dim(tmp_path):
    config, workdir = _tiny(digits_vp), str(tmp_path)
    assert launcher.run(config, workdir, "train") == 0
    losses = _losses(workdir)
    assert losses[-1] < losses[0]
    samples = np.load(os.path.join(workdir, "samples", "step_30.npz"))["images"]
    assert samples.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples))
    assert launcher.run(config, workdir, "eval") == 0
    with open(os.path.join(workdir, "eval", "step_30", "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["nfe"] == 40 and metrics["bits_per_dim_examples"] == 12
    # 17 levels: a uniform model of the pixels has log2(17) = 4.09 bits/dim; a barely trained
    # net must be finite and within a few bits of that.
    assert 0.5 < metrics["bits_per_dim"] < 12
    assert np.isfinite(metrics["digits_frechet_distance"])


@pytest.mark.slow
def test_digits_ve_trains_and_samples_with_reverse_diffusion_and_langevin(tmp_path):
    config, workdir = _tiny(digits_ve, 20), str(tmp_path)
    assert config.sampling.corrector == "langevin"
    assert launcher.run(config, workdir, "train") == 0
    losses = _losses(workdir)
    assert losses[-1] < losses[0]
    samples = np.load(os.path.join(workdir, "samples", "step_20.npz"))["images"]
    assert samples.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples))
