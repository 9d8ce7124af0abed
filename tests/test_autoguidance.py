"""Autoguidance (methods/autoguided.py, guidance.autoguidance): the guided denoiser of an exact
Gaussian mixture guided by the same mixture with inflated variances against the closed-form
extrapolation, the guidance interval, guide == main as the unguided sampler (to float32
rounding) on every shared solver and family, the launcher end to end with a guide run, and the
one-line errors."""
import copy
import dataclasses
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params, tiny_ddpm_config

from configs.flow import digits_rectified_flow
from configs.score_sde import digits_vp
from diffusion_jax import analytic, builders, guidance, launcher, runs
from diffusion_jax import workdir as workdir_io
from diffusion_jax.errors import ConfigError
from diffusion_jax.methods.autoguided import Autoguided, autoguided
from diffusion_jax.methods.base import Method
from diffusion_jax.samplers import solvers
from diffusion_jax.samplers.sampler import Sampler
from test_edm_method import TINY_MODEL as TINY_NCSNPP, tiny_edm_config

# Class c of two is N(mu_c, v s^2 I) with weight pi_c; v is the model's one "parameter": the
# main model has v = 1 (the data), the guide v = 3 (a broader, worse fit of the same classes).
PI, MU, S2 = np.array([0.3, 0.7]), np.array([[-1.0, 0.5], [1.0, -0.5]]), 0.2
MAIN, GUIDE = {"v": jnp.float32(1.0)}, {"v": jnp.float32(3.0)}


@dataclasses.dataclass(frozen=True)
class ExactMixture(Method):
    """The exact denoiser of the mixture with component variance v s^2 (v = params["v"]), on
    'images' of shape (1, 1, 2); labels 0 and 1, or unconditional."""

    num_classes: int = 2
    image_shape: tuple = (1, 1, 2)
    caption_length: int = 0

    has_denoiser: ClassVar[bool] = True
    default_sampler: ClassVar[Sampler] = Sampler(method="heun", num_steps=6, sigma_min=0.002,
                                                 sigma_max=80.0)

    def denoiser_model(self, params, cond, aux, sampler):
        def D(x, sigma, cond=None):
            data = analytic.GaussianMixture(jnp.asarray(PI, jnp.float32),
                                            jnp.asarray(MU, jnp.float32),
                                            params["v"] * S2 * jnp.eye(2)[None].repeat(2, 0),
                                            jnp.array([0, 1]))
            flat = x.reshape(x.shape[0], -1)
            return data.denoiser(flat, sigma, cond if self.num_classes else None).reshape(x.shape)
        return solvers.DenoiserModel(D)


@dataclasses.dataclass(frozen=True)
class ExactClasses(ExactMixture):
    """The same classes' exact conditional denoisers, mu_c + v s^2 / (v s^2 + sigma^2) (x - mu_c),
    written out (cheap to compile: the solver sweep)."""

    def denoiser_model(self, params, cond, aux, sampler):
        def D(x, sigma, cond):
            var = params["v"] * S2
            mu = jnp.asarray(MU, jnp.float32)[cond][:, None, None]
            shrink = var / (var + jnp.broadcast_to(sigma, cond.shape)**2)
            return mu + shrink[:, None, None, None] * (x - mu)
        return solvers.DenoiserModel(D)


def closed_form_D(x, sigma, v, labels=None):
    """E[x0 | x0 + sigma n = x] in float64: per class mu + v s^2 / (v s^2 + sigma^2) (x - mu);
    without labels weighted by the posterior class probabilities."""
    x, sigma = np.asarray(x, np.float64).reshape(-1, 2), np.asarray(sigma, np.float64)[:, None]
    var = v * S2 + sigma**2
    post = [MU[c] + v * S2 / var * (x - MU[c]) for c in range(2)]
    if labels is not None:
        return np.where(np.asarray(labels)[:, None] == 0, post[0], post[1])
    log_w = np.stack([np.log(PI[c]) - 0.5 * np.sum((x - MU[c])**2, -1) / var[:, 0]
                      for c in range(2)])
    w = np.exp(log_w - log_w.max(0))
    w /= w.sum(0)
    return w[0][:, None] * post[0] + w[1][:, None] * post[1]


def _points(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 1, 2)).astype(np.float32) * 1.5
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(5.0), n)).astype(np.float32)
    return x, sigma, (np.arange(n) % 2).astype(np.int32)


def _guided(main, guide, w, cond, **interval):
    method = Autoguided(main, guide)
    aux = {"main": {}, "guide": GUIDE, "guide_aux": {}}
    sampler = main.default_sampler.replace(guidance_scale=w, **interval)
    return method.denoiser_model(MAIN, cond, aux, sampler).denoiser


@pytest.mark.parametrize("w", [0.0, 2.1, 3.5])
@pytest.mark.parametrize("guide_conditional", [True, False])
def test_guided_denoiser_is_the_closed_form_extrapolation(w, guide_conditional):
    x, sigma, labels = _points()
    guide = ExactMixture(num_classes=2 if guide_conditional else 0)
    D = _guided(ExactMixture(), guide, w, jnp.asarray(labels))(x, sigma, jnp.asarray(labels))
    d_main = closed_form_D(x, sigma, 1.0, labels)
    d_guide = closed_form_D(x, sigma, 3.0, labels if guide_conditional else None)
    expected = d_guide + w * (d_main - d_guide)
    np.testing.assert_allclose(np.asarray(D).reshape(-1, 2), expected, rtol=1e-4, atol=1e-5)
    # negative controls that the same check rejects: the unguided D (the guide's parameters
    # replaced by the main model's), and the guide with the other conditioning
    other_guide = closed_form_D(x, sigma, 3.0, None if guide_conditional else labels)
    for wrong in (d_main, other_guide + w * (d_main - other_guide)):
        assert np.max(np.abs(np.asarray(D).reshape(-1, 2) - wrong)) > 1e-2


def test_scale_one_is_the_main_denoiser_and_never_evaluates_the_guide():
    main = ExactMixture()
    sampler = main.default_sampler.replace(guidance_scale=1.0)
    aux = {"main": {}, "guide": None, "guide_aux": None}  # a guide call would fail on these
    x, sigma, labels = _points()
    D = Autoguided(main, main).denoiser_model(MAIN, None, aux, sampler).denoiser
    np.testing.assert_array_equal(
        D(x, sigma, jnp.asarray(labels)),
        main.denoiser_model(MAIN, None, {}, sampler).denoiser(x, sigma, jnp.asarray(labels)))


def test_outside_the_interval_the_denoiser_is_the_main_model():
    x, sigma, labels = _points(n=40, seed=1)
    lo, hi, w = 0.3, 1.5, 2.5
    D = np.asarray(_guided(ExactMixture(), ExactMixture(), w, jnp.asarray(labels),
                           guidance_sigma_lo=lo, guidance_sigma_hi=hi)(
        x, sigma, jnp.asarray(labels))).reshape(-1, 2)
    main = np.asarray(ExactMixture().denoiser_model(MAIN, None, {}, None).denoiser(
        x, sigma, jnp.asarray(labels))).reshape(-1, 2)
    inside = (sigma >= lo) & (sigma <= hi)
    assert 5 < inside.sum() < 35
    np.testing.assert_array_equal(D[~inside], main[~inside])
    d_main, d_guide = closed_form_D(x, sigma, 1.0, labels), closed_form_D(x, sigma, 3.0, labels)
    np.testing.assert_allclose(D[inside], (d_guide + w * (d_main - d_guide))[inside],
                               rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(D[inside] - main[inside])) > 1e-2  # guided inside: not the main model


def _sample(method, params, aux, sampler, x_init, cond):
    fn = jax.jit(lambda p, a, x: method.sample(p, jax.random.key(7), x, cond, aux=a,
                                               sampler=sampler)[0])
    return np.asarray(fn(params, aux, x_init))


# guide == main is D_main + w (D_main - D_main) = D_main, but the guide's parameters are other
# buffers than the main model's and XLA fuses their two networks into the sampler differently
# from the unguided program: Euler, DPM-Solver++(2M) and UniPC come out bit-identical on CPU,
# Heun within a few float32 ulps (2.4e-6 measured); w = 1 is the unguided program itself.
SAME = dict(rtol=1e-5, atol=1e-5)


def test_guide_equal_to_main_samples_the_unguided_sampler():
    _assert_guide_equal_to_main_is_unguided(("heun", "euler", "dpm_solver_pp_2m"))


@pytest.mark.slow
def test_guide_equal_to_main_samples_the_unguided_sampler_on_every_shared_solver():
    _assert_guide_equal_to_main_is_unguided(solvers.SOLVERS)


def _assert_guide_equal_to_main_is_unguided(names):
    main = ExactClasses()
    method = Autoguided(main, main)
    x_init = jax.random.normal(jax.random.key(0), (6, 1, 1, 2))
    cond = jnp.arange(6) % 2

    def samples(sampler):
        def run(x):
            guided = sampler.replace(guidance_scale=2.1)
            return [main.sample(MAIN, jax.random.key(7), x, cond, aux={}, sampler=sampler)[0],
                    method.sample(MAIN, jax.random.key(7), x, cond, sampler=guided,
                                  aux={"main": {}, "guide": MAIN, "guide_aux": {}})[0],
                    method.sample(MAIN, jax.random.key(7), x, cond, sampler=guided,
                                  aux={"main": {}, "guide": GUIDE, "guide_aux": {}})[0]]
        return [np.asarray(a) for a in jax.jit(run)(x_init)]

    for solver in names:
        unguided, same, other = samples(main.default_sampler.replace(method=solver,
                                                                     num_steps=5))
        np.testing.assert_allclose(same, unguided, **SAME, err_msg=solver)
        # negative control: a different guide does guide, beyond the same tolerance
        assert np.max(np.abs(other - unguided)) > 100 * SAME["atol"], solver


def _family_config(family, workdir):
    if family == "edm":
        return tiny_edm_config()
    if family == "ddpm":
        return tiny_ddpm_config()
    if family == "latent":
        from configs.autoencoder import digits as ae_digits
        from configs.latent import digits_edm

        ae = ae_digits.get_config()
        ae.model.update(ch=8, attention=False)
        workdir_io.write_config(workdir, ae)
        config = digits_edm.get_config()
        config.latent.autoencoder_workdir = workdir
    else:
        config = (digits_vp if family == "score_sde" else digits_rectified_flow).get_config()
    config.model.update(TINY_NCSNPP)
    return config


@pytest.mark.parametrize("family", ["edm"] + [pytest.param(f, marks=pytest.mark.slow)
                                              for f in ("ddpm", "score_sde", "flow", "latent")])
def test_every_family_with_a_denoiser_is_autoguided(family, tmp_path):
    config = _family_config(family, str(tmp_path))
    main = builders.build_method(config)
    shapes = jax.eval_shape(main.init_params, jax.random.key(0))
    params, guide_params = random_params(shapes, 0), random_params(shapes, 1)
    aux = jax.tree.map(np.asarray, main.init_aux(params, jax.random.key(1)))
    sampler = Sampler(method="euler", num_steps=2, sigma_min=0.01, sigma_max=20.0)
    x_init = jax.random.normal(jax.random.key(2), (2,) + tuple(main.noise_shape))
    unguided = _sample(main, params, aux, sampler, x_init, None)
    guided = sampler.replace(guidance_scale=2.0)
    outs = []
    for gp in (params, guide_params):
        method, guided_aux = autoguided(main, aux, main, gp, aux)
        method.check_sampler(guided)
        outs.append(_sample(method, params, guided_aux, guided, x_init, None))
    np.testing.assert_allclose(outs[0], unguided, **SAME)
    assert np.max(np.abs(outs[1] - unguided)) > 100 * SAME["atol"]


def test_a_chain_sampler_is_refused():
    main = builders.build_method(tiny_ddpm_config())
    for chain in ("ancestral", "ddim"):
        with pytest.raises(ConfigError, match="runs on the shared solvers"):
            Autoguided(main, main).check_sampler(main.sampler(method=chain))


def test_guidance_interval_uses_the_same_closed_interval_as_classifier_free_guidance():
    D = lambda x, sigma, cond=None: x * 0.0 + 1.0  # noqa: E731
    G = lambda x, sigma, cond=None: x * 0.0  # noqa: E731
    x = jnp.zeros((3, 1, 1, 1))
    out = guidance.autoguidance(D, G, 2.0, sigma_lo=1.0, sigma_hi=2.0)(
        x, jnp.array([0.5, 1.0, 2.0]))
    np.testing.assert_array_equal(np.asarray(out).ravel(), [1.0, 2.0, 2.0])


# --- the launcher ------------------------------------------------------------------------------

def _tiny_run(workdir, *, nf=8, steps=2, class_conditional=True, dataset="digits"):
    config = tiny_edm_config(num_steps=steps, batch_size=8, checkpoint_every=steps,
                             log_every=steps, preview_samples=0)
    config.model.update(nf=nf, class_conditional=class_conditional)
    config.data.dataset = dataset
    config.sampling.update(num_samples=4, batch_size=4, num_steps=3)
    config.logging.tensorboard = False
    return config


def _sample_config(config, guide_workdir, w=2.0, **sampling):
    config = copy.deepcopy(config)
    config.guidance.guide_workdir = str(guide_workdir)
    config.sampling.update(guidance_scale=w, **sampling)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    main_dir, guide_dir = tmp_path_factory.mktemp("main"), tmp_path_factory.mktemp("guide")
    main = _tiny_run(main_dir)
    assert launcher.run(main, str(main_dir), "train") == 0
    assert launcher.run(_tiny_run(guide_dir, nf=4, steps=1), str(guide_dir), "train") == 0
    return main, main_dir, guide_dir


def _samples(config, workdir, train_workdir):
    assert launcher.run(config, str(workdir), "sample", train_workdir=str(train_workdir)) == 0
    step = workdir_io.read_config(train_workdir).training.num_steps
    return np.load(workdir / "samples" / f"sample_{step}_{config.sampling.seed}.npz")["images"]


@pytest.mark.slow
def test_launcher_samples_with_a_smaller_shorter_guide_run(trained, tmp_path):
    main, main_dir, guide_dir = trained
    unguided = _samples(main, tmp_path / "unguided", main_dir)
    guided = _samples(_sample_config(main, guide_dir), tmp_path / "guided", main_dir)
    itself = _samples(_sample_config(main, main_dir), tmp_path / "itself", main_dir)
    assert guided.shape == unguided.shape == (4, 8, 8, 1) and np.isfinite(guided).all()
    np.testing.assert_allclose(itself, unguided, **SAME)  # the main run guiding itself
    assert np.max(np.abs(guided - unguided)) > 100 * SAME["atol"]
    with_step = _sample_config(main, guide_dir)
    with_step.guidance.guide_step = 7
    with pytest.raises(ConfigError, match=r"no checkpoint 7 there \(steps: 1;"):
        launcher.run(with_step, str(tmp_path / "step"), "sample", train_workdir=str(main_dir))


def test_guide_errors_are_one_line(tmp_path):
    main = _tiny_run(tmp_path / "main")

    def fails(config, match):
        with pytest.raises(ConfigError, match=match) as error:
            method = builders.build_method(config)
            runs.check_guide(config, method, builders.build_sampler(config, method))
        assert "\n" not in str(error.value)

    def run_dir(name, config):
        os.makedirs(tmp_path / name)
        workdir_io.write_config(str(tmp_path / name), config)
        return tmp_path / name

    fails(_sample_config(main, tmp_path / "missing"), "does not exist")
    fails(_sample_config(main, run_dir("empty", main)), r"no checkpoint  there \(steps: none")
    shapes = run_dir("shapes", _tiny_run(tmp_path, dataset="shapes"))
    fails(_sample_config(main, shapes), r"image_shape \(16, 16, 3\)")
    conditional = run_dir("conditional", main)
    fails(_sample_config(_tiny_run(tmp_path, class_conditional=False), conditional),
          "conditioned on 10 classes")
    fails(_sample_config(main, conditional, negative_label=3), "negative_label")
    ddpm = run_dir("ddpm", tiny_ddpm_config())
    fails(_sample_config(tiny_ddpm_config(), ddpm, method="ancestral"),
          "runs on the shared solvers")
    with pytest.raises(ConfigError, match="read by --mode=sample"):
        launcher.run(_sample_config(main, conditional), str(tmp_path / "train"), "train")
