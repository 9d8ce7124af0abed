"""Consistency models (Song et al. 2023; Song & Dhariwal 2023) against closed forms: the
boundary condition, the schedules and distances, the CD loss of the exact consistency function,
a model distilled from an exact Gaussian teacher, and the digits teacher -> CD pipeline."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from helpers import MLP, ROOT
from diffusion_jax import analytic, builders, preconditioning, runs
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import consistency as objectives
from diffusion_jax.methods.consistency import Consistency
from diffusion_jax.samplers import consistency as cm_sampler
from diffusion_jax.samplers import edm as edm_samplers
from configs.consistency import digits_cd

MEAN = jnp.array([0.5, -0.3])
COV = jnp.array([[0.30, 0.10], [0.10, 0.12]])
GAUSSIAN = analytic.gaussian(MEAN, COV)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def exact_consistency_fn(x, sigma, cond=None):
    """f*(x, sigma): the exact probability-flow ODE map of the Gaussian from sigma to sigma_min."""
    return analytic.gaussian_ode_flow(x, MEAN, COV, sigma, SIGMA_MIN)


def test_boundary_condition_holds_exactly_for_random_parameters():
    config = digits_cd.get_config()
    config.model.update(nf=8, attn_resolutions=())
    method = builders.build_method(config)
    # random weights everywhere (the zero-initialised output layer would hide the network)
    params = helpers.random_params(jax.eval_shape(method.init_params, jax.random.PRNGKey(0)),
                                   seed=1, scale=0.3)
    f = jax.jit(method.consistency_fn(params))  # one program for both noise levels
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 1))
    np.testing.assert_array_equal(np.asarray(f(x, jnp.full((4,), SIGMA_MIN))), np.asarray(x))
    away = np.asarray(f(x, jnp.full((4,), 1.0)))
    assert np.abs(away - np.asarray(x)).max() > 1e-2  # the network does act away from sigma_min


def test_consistency_coefficients_are_the_papers():
    precond = preconditioning.ConsistencyPrecond(sigma_data=0.5, sigma_min=SIGMA_MIN)
    sigma = jnp.array([SIGMA_MIN, 0.1, 1.0, 80.0])
    c = precond(sigma)
    sd = 0.5
    np.testing.assert_allclose(c.c_skip, sd**2 / ((sigma - SIGMA_MIN) ** 2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c.c_out, (sigma - SIGMA_MIN) * sd / np.sqrt(sigma**2 + sd**2),
                               rtol=1e-6)
    assert float(c.c_skip[0]) == 1.0 and float(c.c_out[0]) == 0.0
    edm = preconditioning.EDMPrecond(sd)(sigma)
    np.testing.assert_allclose(c.c_in, edm.c_in, rtol=1e-6)
    np.testing.assert_allclose(c.c_noise, edm.c_noise, rtol=1e-6)


def test_ct_schedules_match_their_formulas():
    K, s0, s1 = 800_000, 2, 150
    for k in (0, 1000, 123_456, 400_000, 800_000):
        expected = max(math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1), 1) + 1
        assert int(objectives.ct_num_scales(k, K, s0, s1)) == expected
    assert int(objectives.ct_num_scales(0, K)) == 2 and int(objectives.ct_num_scales(K, K)) == 151
    assert int(objectives.ct_num_scales(0, K, 1, 150)) == 2  # never fewer than two levels
    # mu(k) = exp(s0 ln(mu0) / (N(k) - 1)), as the released code (cm/script_util.py) computes it
    for n in (2, 17, 151):
        assert float(objectives.ct_target_decay(n, 2, 0.9)) == pytest.approx(
            math.exp(2 * math.log(0.9) / (n - 1)), rel=1e-6)
    assert float(objectives.ct_target_decay(2, 2, 0.9)) == pytest.approx(0.81, rel=1e-6)
    assert float(objectives.ct_target_decay(151, 2, 0.0)) == 0.0
    # improved CT: N = min(10 * 2^floor(k / K'), 1280) + 1, K' = floor(K / (log2(128) + 1))
    K = 400_000
    stage = math.floor(K / (math.log2(1280 / 10) + 1))
    for k, n in ((0, 11), (stage - 1, 11), (stage, 21), (3 * stage + 5, 81), (K, 1281)):
        assert int(objectives.ict_num_scales(k, K, 10, 1280)) == n


def test_karras_levels_are_the_rho_grid():
    levels = objectives.karras_levels(jnp.arange(18), 18, SIGMA_MIN, SIGMA_MAX, 7.0)
    i = np.arange(18)
    expected = (SIGMA_MIN ** (1 / 7) + i / 17 * (SIGMA_MAX ** (1 / 7) - SIGMA_MIN ** (1 / 7))) ** 7
    np.testing.assert_allclose(levels, expected, rtol=1e-5)


def test_lognormal_index_distribution_is_the_erf_mass_of_each_interval():
    logits = objectives.lognormal_index_logits(21, 1281, SIGMA_MIN, SIGMA_MAX, 7.0, -1.1, 2.0)
    p = np.exp(np.asarray(logits, np.float64))
    assert np.all(p[20:] == 0.0)
    levels = np.asarray(objectives.karras_levels(np.arange(21), 21, SIGMA_MIN, SIGMA_MAX, 7.0),
                        np.float64)
    from scipy.special import erf

    cdf = erf((np.log(levels) + 1.1) / (np.sqrt(2) * 2.0))
    np.testing.assert_allclose(p[:20], cdf[1:] - cdf[:-1], rtol=1e-4)


def test_pseudo_huber_matches_its_formula_and_limits():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
    y = x + jnp.array([1e-4, 0.5, 30.0])[:, None, None, None]
    c = 0.03
    sq = np.sum(np.square(np.asarray(x - y)).reshape(3, -1), axis=-1)
    d = np.asarray(objectives.pseudo_huber(x, y, c))
    np.testing.assert_allclose(d, np.sqrt(sq + c**2) - c, rtol=1e-5)
    assert d[0] == pytest.approx(sq[0] / (2 * c), rel=1e-3)  # quadratic for small differences
    assert d[2] == pytest.approx(np.sqrt(sq[2]) - c, rel=1e-4)  # linear for large ones
    assert objectives.default_huber_c(3 * 32 * 32) == pytest.approx(0.03, rel=0.01)


def _cd_loss(f, num_scales, rng, x0, teacher_solver="heun"):
    teacher = helpers.ExactTeacher(GAUSSIAN, (2,)).conditional_denoiser({})
    return objectives.consistency_loss(
        f, f, x0, rng, num_scales=num_scales,
        sample_index=lambda r, n: jax.random.randint(r, (n,), 0, num_scales - 1),
        distance=objectives.distance_fn("l2"), teacher=teacher, teacher_solver=teacher_solver,
        sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


def test_cd_loss_of_the_exact_consistency_function_vanishes_at_the_teachers_order():
    """f* is consistent along exact ODE paths, so its CD loss is only the teacher step's error:
    tiny, and about 2^-6 (Heun: local error O(h^3), squared) each time N doubles."""
    x0 = GAUSSIAN.sample(jax.random.PRNGKey(0), 4096)
    rng = jax.random.PRNGKey(1)
    losses = [float(jnp.mean(_cd_loss(exact_consistency_fn, n, rng, x0))) for n in (18, 36, 72)]
    assert losses[0] < 1e-4
    assert losses[0] / losses[1] > 20 and losses[1] / losses[2] > 20
    euler = float(jnp.mean(_cd_loss(exact_consistency_fn, 18, rng, x0, "euler")))
    assert euler > 5 * losses[0]  # first order: a larger target error
    wrong = lambda x, sigma, cond=None: exact_consistency_fn(x, sigma) + 0.1 * jnp.sqrt(sigma)[:, None]
    assert float(jnp.mean(_cd_loss(wrong, 18, rng, x0))) > 1e-3


@pytest.fixture(scope="module")
def distilled():
    """A consistency model (MLP backbone) distilled from the exact teacher of GAUSSIAN."""
    method = Consistency(model=MLP(), image_shape=(2,), training_mode="cd",
                         teacher=helpers.ExactTeacher(GAUSSIAN, (2,)), distance="l2",
                         num_scales=18, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    params = method.init_params(jax.random.PRNGKey(0))
    aux = method.init_aux(params, jax.random.PRNGKey(1))
    optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, 4000))
    opt_state = optimizer.init(params)

    def step(carry, k):
        params, opt_state = carry
        rng = jax.random.fold_in(jax.random.PRNGKey(2), k)
        data_rng, loss_rng = jax.random.split(rng)
        batch = {"image": GAUSSIAN.sample(data_rng, 512), "label": None}
        loss, grads = jax.value_and_grad(lambda p: method.loss(p, batch, loss_rng, aux=aux,
                                                               step=k)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(4000)))(
        (params, opt_state))
    return method, params, aux, np.asarray(losses)


def _heun_endpoint(z, num_scales=18):
    """The teacher's own ODE endpoint: Heun steps of the exact denoiser down the N-level grid."""
    D = helpers.ExactTeacher(GAUSSIAN, (2,)).conditional_denoiser({})
    levels = objectives.karras_levels(jnp.arange(num_scales), num_scales)[::-1]
    x = SIGMA_MAX * z
    for i in range(num_scales - 1):
        x = edm_samplers.heun_step(D, x, levels[i], levels[i + 1])
    return x


@pytest.mark.slow
def test_distilled_model_maps_noise_to_the_exact_ode_endpoint(distilled):
    """Measured (4000 steps): RMS 0.021 to the teacher's 18-step Heun endpoint, 0.049 to the
    exact endpoint, whose distance to the Heun endpoint (0.036) is the teacher's discretisation
    error; the data's spread sqrt(tr C) is 0.65."""
    method, params, aux, losses = distilled
    assert losses[-200:].mean() < 0.1 * losses[:200].mean()
    z = jax.random.normal(jax.random.PRNGKey(3), (4096, 2))
    one_step, stats = method.sample(params, jax.random.PRNGKey(4), z, aux=aux)
    rms = lambda a, b: float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=-1))))
    exact = analytic.gaussian_ode_flow(SIGMA_MAX * z, MEAN, COV, SIGMA_MAX, SIGMA_MIN)
    data_scale = float(jnp.sqrt(jnp.trace(COV)))
    assert rms(one_step, _heun_endpoint(z)) < 0.05 * data_scale
    assert rms(one_step, exact) < 0.1 * data_scale
    assert rms(one_step, exact) < 0.5 * rms(jnp.zeros_like(z) + MEAN, exact)  # far from trivial
    assert float(stats["nfe"]) == 1.0


@pytest.mark.slow
def test_one_and_two_step_samples_match_the_data_moments(distilled):
    """One step: measured mean error 0.01, covariance error 0.04 (the 18-step teacher's own
    endpoint has 0.033). Two steps through sigma = 0.8 lean on the student's accuracy at an
    intermediate level, which this short distillation learns less well (covariance 0.057)."""
    method, params, aux, _ = distilled
    z = jax.random.normal(jax.random.PRNGKey(5), (8192, 2))
    x, _ = method.sample(params, jax.random.PRNGKey(6), z, aux=aux)
    np.testing.assert_allclose(np.asarray(x).mean(0), MEAN, atol=0.03)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), COV, atol=0.05)
    x, stats = method.sample(params, jax.random.PRNGKey(6), z, aux=aux,
                             sampler=method.sampler(method="multistep", sigmas=(80.0, 0.8)))
    np.testing.assert_allclose(np.asarray(x).mean(0), MEAN, atol=0.06)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), COV, atol=0.07)
    assert float(stats["nfe"]) == 2.0


def test_multistep_grid_and_sampler():
    np.testing.assert_allclose(cm_sampler.consistency_sigmas(1), [SIGMA_MAX, 0.0], rtol=1e-6)
    grid = cm_sampler.consistency_sigmas(3, SIGMA_MIN, SIGMA_MAX, 7.0)
    assert grid.shape == (4,) and float(grid[0]) == pytest.approx(SIGMA_MAX) and grid[-1] == 0
    assert float(grid[2]) > SIGMA_MIN
    with pytest.raises(ValueError, match="decrease"):
        cm_sampler.consistency_sigmas(sigmas=(0.5, 2.0))
    # with f* the multistep sampler draws exact samples whatever the grid
    z = jax.random.normal(jax.random.PRNGKey(0), (8192, 2))
    x = cm_sampler.consistency_sample(exact_consistency_fn, jax.random.PRNGKey(1), z.shape,
                                      sigmas=cm_sampler.consistency_sigmas(sigmas=(80.0, 2.0, 0.3)),
                                      x_init=SIGMA_MAX * z)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), COV, atol=0.03)


@pytest.mark.slow
def test_inpainting_keeps_known_pixels_and_sdedit_zero_is_identity(distilled):
    method, params, aux, _ = distilled
    x = GAUSSIAN.sample(jax.random.PRNGKey(7), 16)
    mask = jnp.zeros((16, 2), bool).at[:, 0].set(True)
    out = helpers.edit(method, params, jax.random.PRNGKey(8), x, mask, aux=aux, task="inpaint",
                       strength=1.0, method="multistep", num_steps=2)
    np.testing.assert_array_equal(np.asarray(out[:, 0]), np.asarray(x[:, 0]))
    same = helpers.edit(method, params, jax.random.PRNGKey(8), x, mask, aux=aux, task="sdedit",
                        strength=0.0, method="multistep", num_steps=2)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))


def test_ct_target_follows_mu_of_k_and_ict_has_no_target():
    params = {"w": jnp.ones(3)}
    ct = Consistency(model=MLP(), image_shape=(2,), training_mode="ct", total_steps=100)
    aux = {"target": {"w": jnp.zeros(3)}}
    new = ct.update_aux(aux, params, 50)
    mu = math.exp(2 * math.log(0.9) / (int(objectives.ct_num_scales(50, 100)) - 1))
    np.testing.assert_allclose(new["target"]["w"], 1 - mu, rtol=1e-4)
    ict = Consistency(model=MLP(), image_shape=(2,), training_mode="ict", total_steps=100)
    assert ict.init_aux(params, jax.random.PRNGKey(0)) == {}
    no_ema = Consistency(model=MLP(), image_shape=(2,), training_mode="ct", mu0=0.0)
    assert no_ema.init_aux(params, jax.random.PRNGKey(0)) == {}  # target = online, no copy
    cd = Consistency(model=MLP(), image_shape=(2,), training_mode="cd", target_ema=0.5,
                     teacher=helpers.ExactTeacher(GAUSSIAN, (2,)))
    np.testing.assert_allclose(cd.update_aux(aux, params, 0)["target"]["w"], 0.5)


@pytest.mark.slow
def test_ct_and_ict_learn_the_gaussian_from_data_alone():
    """No teacher: 2000 steps each, Adam 4e-3 decayed to 0. CT as `digits_ct.py` runs it (mu0 =
    0) with N(k) up to s1 = 40, iCT with N doubling from 10 to 320. Measured: CT means 0.501 /
    -0.309, variances 0.258 / 0.105; iCT 0.525 / -0.282, 0.248 / 0.114 (data 0.5 / -0.3,
    0.30 / 0.12). Standard errors over 8192 samples: 0.006 for a mean, 1.6% for a variance; the
    tolerances (0.05, 20%) are the bias of so short a training. A collapsed model has variances
    below 0.01, the under-dispersed one of the old 45% tolerance fails."""
    for mode, distance, weighting, s0, s1 in (("ct", "l2", "uniform", 2, 40),
                                              ("ict", "pseudo_huber", "icm", 10, 320)):
        method = Consistency(model=MLP(), image_shape=(2,), training_mode=mode,
                             distance=distance, weighting=weighting, total_steps=2000, s0=s0,
                             s1=s1, mu0=0.0)
        params = method.init_params(jax.random.PRNGKey(0))
        aux = method.init_aux(params, jax.random.PRNGKey(1))
        assert aux == {}
        optimizer = optax.adam(optax.cosine_decay_schedule(4e-3, 2000))

        def step(carry, k):
            params, opt_state, aux = carry
            rng = jax.random.fold_in(jax.random.PRNGKey(2), k)
            batch = {"image": GAUSSIAN.sample(rng, 512), "label": None}
            (loss, metrics), grads = jax.value_and_grad(
                lambda p: method.loss(p, batch, rng, aux=aux, step=k), has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state, method.update_aux(aux, params, k)), metrics["num_scales"]

        (params, _, aux), scales = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(2000)))(
            (params, optimizer.init(params), aux))
        assert (int(scales[0]), int(scales[-1])) == (s0 + (mode == "ict"), s1 + 1)
        x, _ = method.sample(params, jax.random.PRNGKey(3),
                             jax.random.normal(jax.random.PRNGKey(4), (8192, 2)), aux=aux)
        x = np.asarray(x)
        np.testing.assert_allclose(x.mean(0), MEAN, atol=0.05, err_msg=mode)
        np.testing.assert_allclose(np.diag(np.cov(x.T)), np.diag(COV), rtol=0.2, err_msg=mode)


@pytest.mark.slow
def test_cd_without_teacher_and_bad_names_are_config_errors(tmp_path):
    config = digits_cd.get_config()
    method = builders.build_method(config)  # buildable (e.g. --mode=info) without a teacher
    with pytest.raises(ConfigError, match="teacher_workdir"):
        method.init_aux(method.init_params(jax.random.PRNGKey(0)), jax.random.PRNGKey(0))
    config.consistency.teacher_workdir = str(tmp_path)
    with pytest.raises(ConfigError, match="config.json"):
        builders.build_method(config)
    for key, value in (("training_mode", "xd"), ("distance", "l3"), ("weighting", "snr")):
        bad = digits_cd.get_config()
        bad.consistency[key] = value
        with pytest.raises(ConfigError, match=f"consistency.{key}"):
            builders.build_method(bad)
    lpips = digits_cd.get_config()
    lpips.consistency.update(distance="lpips", training_mode="ct", init_from_teacher=False)
    method = builders.build_method(lpips)
    with pytest.raises(ConfigError, match="consistency.lpips_weights"):
        method.init_aux(method.init_params(jax.random.PRNGKey(0)), jax.random.PRNGKey(0))


TINY = ["--config.model.nf=8", "--config.model.attn_resolutions=()",
        "--config.training.batch_size=32", "--config.training.log_every=5",
        "--config.sampling.num_samples=8", "--config.sampling.batch_size=8"]


def _launch(workdir, config, *extra):
    """launch.py on two fake devices (the batch and the aux state still split over a mesh)."""
    args = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={config}",
            f"--workdir={workdir}", *TINY, *extra]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.mark.slow
def test_digits_teacher_then_cd_then_one_and_two_step_samples_through_the_launcher(tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    result = _launch(teacher, "configs/edm/digits.py", "--config.training.num_steps=10",
                     "--config.training.checkpoint_every=10",
                     "--config.training.sample_at_end=False")
    assert result.returncode == 0, result.stderr[-3000:]
    result = _launch(student, "configs/consistency/digits_cd.py",
                     f"--config.consistency.teacher_workdir={teacher}",
                     "--config.training.num_steps=10", "--config.training.checkpoint_every=10")
    assert result.returncode == 0, result.stderr[-3000:]
    one = np.load(student / "samples" / "step_10.npz")["images"]
    assert one.shape == (8, 8, 8, 1) and np.isfinite(one).all()
    result = _launch(student, "configs/consistency/digits_cd.py", "--mode=sample",
                     f"--config.consistency.teacher_workdir={teacher}",
                     "--config.sampling.method=multistep", "--config.sampling.num_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    two = np.load(student / "samples" / "sample_10_1.npz")["images"]
    assert two.shape == (8, 8, 8, 1) and not np.allclose(one, two)
    # a teacher of another shape is refused before training starts
    result = _launch(tmp_path / "bad", "configs/consistency/digits_cd.py",
                     f"--config.consistency.teacher_workdir={teacher}",
                     "--config.model.nf=16", "--config.training.num_steps=2")
    assert result.returncode == 2 and "does not match" in result.stderr


@pytest.mark.slow
def test_lpips_distance_reads_its_weights_from_the_configured_file(tmp_path):
    """CT with the LPIPS distance: the launcher layer reads the weights named by
    consistency.lpips_weights (`runs.resolve`) into the aux state, and the loss is the LPIPS distance between
    online and target outputs (zero for identical networks at identical inputs)."""
    from diffusion_jax.losses import lpips

    path = str(tmp_path / "lpips.npz")
    weights = helpers.write_random_lpips_weights(path)
    config = digits_cd.get_config()
    config.model.update(nf=8, attn_resolutions=())
    config.consistency.update(training_mode="ct", init_from_teacher=False, distance="lpips",
                              lpips_weights=path, lpips_resize=16)
    method = builders.build_method(config)
    params = method.init_params(jax.random.PRNGKey(1))
    _, aux = method.start(params, method.init_aux(params, jax.random.PRNGKey(2)),
                          runs.resolve(method.requirements(), config, {}))
    np.testing.assert_array_equal(aux["lpips"]["lin0"]["kernel"], weights["lin0"]["kernel"])
    images = jax.random.uniform(jax.random.PRNGKey(3), (4, 8, 8, 1), minval=-1.0, maxval=1.0)
    batch = {"image": images, "label": None}
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: method.loss(p, batch, jax.random.PRNGKey(4), aux=aux, step=0)[0]))(params)
    assert np.isfinite(float(loss)) and float(loss) >= 0.0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    x = jax.random.normal(jax.random.PRNGKey(5), (4, 8, 8, 1))
    distance = method._distance(aux)
    np.testing.assert_allclose(distance(x, x), 0.0, atol=1e-6)
    np.testing.assert_allclose(distance(x, x + 0.5), lpips.lpips_distance_fn(
        weights, resize_to=16)(x, x + 0.5), rtol=1e-6)


@pytest.mark.slow
def test_consistency_steps_experiment_quick_through_the_launcher(tmp_path):
    import csv

    args = [sys.executable, os.path.join(ROOT, "launch.py"),
            "--experiment=experiments/consistency_steps.py:quick", f"--workdir={tmp_path}"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| CD | onestep | 1 |" in result.stdout
    with open(tmp_path / "consistency_steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], int(r["nfe"])) for r in rows] == (
        [("EDM teacher", 35)] + [(m, k) for m in ("CD", "iCT") for k in (1, 2)])
    assert all(np.isfinite(float(r["digits_frechet"])) for r in rows)
    assert (tmp_path / "consistency_steps.png").exists()


@pytest.mark.slow
def test_cifar10_configs_build_the_papers_56_40m_network():
    from diffusion_jax.model_size import count_params
    from configs.consistency import cifar10_cd_l2, cifar10_cd_lpips, cifar10_ct, cifar10_ict

    for module in (cifar10_cd_l2, cifar10_cd_lpips, cifar10_ct, cifar10_ict):
        config = module.get_config()
        method = builders.build_method(config)
        params = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
        assert count_params(params) == 56_395_651, module.__name__
        assert (config.optim.name, config.optim.grad_clip) == ("radam", 0.0)
    assert cifar10_cd_lpips.get_config().consistency.init_from_teacher
    ict = cifar10_ict.get_config()
    assert (ict.training.batch_size, ict.consistency.distance, ict.model.dropout) == (
        1024, "pseudo_huber", 0.3)
