"""The flow-matching method and its samplers against closed forms.

Ground truth written here: the exact velocity of Gaussian-mixture data on a path,
v*(x_t, t) = sum_k r_k (alpha' E[x0 | x_t, k] + sigma' E[eps | x_t, k]) with x_t | k ~
N(alpha mu_k, alpha^2 C_k + sigma^2 I) (valid at both ends, t = 0 and t = 1), and for one
Gaussian the exact ODE map x_t = alpha_t mu + U diag(sqrt(alpha_t^2 lam + sigma_t^2)) z (the
flow keeps z = U^T (x_t - alpha_t mu) / sqrt(alpha_t^2 lam + sigma_t^2)), and the loss minimum
E_t tr Cov(target | x_t) / d. Statistical checks use tolerances from the standard error and are
shown to reject a wrong model (negative controls).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from helpers import launch_one_device

from configs.flow import digits_rectified_flow
from diffusion_jax import analytic, builders
from diffusion_jax.methods.flow import Flow
from diffusion_jax.processes import interpolants as itp
from diffusion_jax.samplers import flow as flow_samplers
from diffusion_jax.samplers import solvers

GAUSSIAN = analytic.gaussian(jnp.array([0.5, -1.0]), jnp.array([[0.3, 0.2], [0.2, 1.5]]))
MIXTURE = analytic.GaussianMixture(
    weights=jnp.array([0.5, 0.3, 0.2]),
    means=jnp.array([[1.0, -0.5], [-1.2, 0.8], [0.2, 1.5]]),
    covs=jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.15, 0.0], [0.0, 0.4]],
                    [[0.05, 0.0], [0.0, 0.05]]]))
DATA = {"gaussian": GAUSSIAN, "mixture": MIXTURE}
PATHS = {"linear": itp.Linear(), "gvp": itp.GVP()}


def exact_velocity(data, path):
    """v*(x_t, t) of `data` on `path`, x_t (B, d), t (B,)."""
    def v(x, t):
        t = jnp.broadcast_to(t, x.shape[:1])
        a, s = path.alpha(t)[:, None, None, None], path.sigma(t)[:, None, None, None]
        da, ds = path.d_alpha(t)[:, None], path.d_sigma(t)[:, None]
        cov = a**2 * data.covs[None] + s**2 * jnp.eye(data.dim)  # (B, K, d, d)
        diff = x[:, None] - a[..., 0] * data.means[None]  # (B, K, d)
        solved = jnp.linalg.solve(cov, diff[..., None])[..., 0]
        logdet = jnp.linalg.slogdet(cov)[1]
        logr = jnp.log(data.weights) - 0.5 * (jnp.sum(diff * solved, -1) + logdet)
        r = jax.nn.softmax(logr, axis=-1)
        x0 = data.means[None] + a[..., 0] * jnp.einsum("kij,bkj->bki", data.covs, solved)
        eps = s[..., 0] * solved
        return jnp.einsum("bk,bkd->bd", r, da[:, None] * x0 + ds[:, None] * eps)
    return v


def gaussian_endpoint(x1, path, t_lo=0.0):
    """The exact ODE map of GAUSSIAN data from x at t = 1 to t_lo."""
    lam, u = jnp.linalg.eigh(GAUSSIAN.covs[0])
    mu = GAUSSIAN.means[0]
    scale = lambda t: jnp.sqrt(path.alpha(t) ** 2 * lam + path.sigma(t) ** 2)
    t1, t0 = jnp.asarray(1.0), jnp.asarray(t_lo)
    z = ((x1 - path.alpha(t1) * mu) @ u) / scale(t1)
    return path.alpha(t0) * mu + (z * scale(t0)) @ u.T


def moments_match(samples, data, rng=jax.random.key(99), k=4.0):
    """Sample mean and covariance within k standard errors of the data's, the standard errors
    estimated from as many draws of the data itself (so the same rule holds for mixtures)."""
    n = samples.shape[0]
    ref = data.sample(rng, n)
    centred = ref - data.mean
    se_mean = jnp.std(ref, axis=0) / math.sqrt(n)
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = jnp.std(products, axis=0) / math.sqrt(n)
    mean_ok = jnp.all(jnp.abs(jnp.mean(samples, 0) - data.mean) < k * se_mean)
    cov_ok = jnp.all(jnp.abs(jnp.cov(samples.T) - data.covariance) < k * se_cov + k * se_mean**2)
    return bool(mean_ok and cov_ok)


N = 4000
X1 = jax.random.normal(jax.random.key(0), (N, 2))


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("method,steps", [("flow_euler", 200), ("flow_heun", 32),
                                          ("flow_dopri5", 0)])
def test_ode_samplers_reproduce_the_data_moments(method, steps, data):
    """From N(0, I) at t = 1 the exact velocity carries the samples to the data's moments;
    negative control: the same check rejects the samples of the velocity of the data shifted
    by 0.1 in its mean, integrated the same way."""
    data, path = DATA[data], PATHS["linear"]
    run = lambda v: flow_samplers.run(method, v, path, "velocity", jax.random.key(1), X1,
                                      num_steps=steps, rtol=1e-5, atol=1e-5)[0]
    assert moments_match(run(exact_velocity(data, path)), data)
    shifted = analytic.GaussianMixture(data.weights, data.means + 0.1, data.covs)
    assert not moments_match(run(exact_velocity(shifted, path)), data)


@pytest.mark.parametrize("path", list(PATHS))
def test_euler_is_order_1_and_heun_order_2_on_the_ode_endpoint(path):
    """Error of the endpoint against the exact Gaussian ODE map at N = 8, 16, 32 steps: the
    slope of log error against log N is 1 for Euler and 2 for Heun."""
    path = PATHS[path]
    x1 = X1[:256]
    exact = gaussian_endpoint(x1, path)
    v = exact_velocity(GAUSSIAN, path)
    steps = np.array([8, 16, 32])
    for method, order in (("flow_euler", 1.0), ("flow_heun", 2.0)):
        errors = [float(jnp.max(jnp.abs(flow_samplers.run(method, v, path, "velocity",
                                                          jax.random.key(0), x1,
                                                          num_steps=int(n))[0] - exact)))
                  for n in steps]
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        assert abs(slope - order) < 0.25, (method, errors, slope)


def test_dopri5_reaches_the_exact_endpoint_and_reports_its_evaluations():
    """dopri5 at rtol = atol = 1e-6 is within 1e-4 of the exact map; NFE = 1 + 6 steps."""
    path = PATHS["linear"]
    x, nfe = flow_samplers.run("flow_dopri5", exact_velocity(GAUSSIAN, path), path, "velocity",
                               jax.random.key(0), X1[:256], num_steps=0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x, gaussian_endpoint(X1[:256], path), atol=1e-4)
    assert int(nfe) > 7 and (int(nfe) - 1) % 6 == 0


@pytest.mark.parametrize("form", flow_samplers.DIFFUSION_FORMS)
def test_the_sde_sampler_keeps_the_marginals_for_every_diffusion_form(form):
    """SiT's SDE sampler (250 points, then the 'euler' last step of size 0.04) with the exact
    velocity ends at the data's moments for every w_t; negative control: the same sampler on
    the velocity of the data shifted by 0.1 is rejected by the same check. (SiT's default
    'mean' last step adds w_t score over those 0.04: with w = 1, 'constant', it over-denoises,
    the variance about 5 standard errors low here; with the other forms w_t is small there.)"""
    data, path = MIXTURE, PATHS["linear"]
    ts = jnp.linspace(*flow_samplers.time_interval(path, "velocity", eps=0.0, sde=True,
                                                   diffusion_form=form, last_step_size=0.04),
                      250)
    sample = lambda v: flow_samplers.sde_sample(v, path, jax.random.key(2), X1, ts=ts,
                                                diffusion_form=form, last_step="euler")
    assert moments_match(sample(exact_velocity(data, path)), data)
    shifted = analytic.GaussianMixture(data.weights, data.means + 0.1, data.covs)
    assert not moments_match(sample(exact_velocity(shifted, path)), data)


def test_the_sde_last_steps_and_nfe():
    """'mean', 'tweedie' and 'euler' from t = last_step_size land on the data's moments, and so
    does 'none' (as in SiT, the grid then runs to t = 0 with no separate last step); NFE =
    num_steps - 1 plus the last step."""
    data, path = GAUSSIAN, PATHS["linear"]
    v = exact_velocity(data, path)
    for last_step in ("mean", "tweedie", "euler"):
        x, nfe = flow_samplers.run("flow_sde", v, path, "velocity", jax.random.key(3), X1,
                                   num_steps=100, last_step=last_step, last_step_size=0.04)
        assert moments_match(x, data), last_step
        assert int(nfe) == 100
    x, nfe = flow_samplers.run("flow_sde", v, path, "velocity", jax.random.key(3), X1,
                               num_steps=100, last_step="none", last_step_size=0.3)
    assert int(nfe) == 99 and moments_match(x, data)


class ExactVelocityNet(nn.Module):
    """The exact prediction of `data` on `path` as a network on (B, 1, 1, d) images (no
    parameters), in the role of a trained model of the Flow method."""

    data: object
    interpolant: object
    kind: str = "velocity"

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        flat = x.reshape(x.shape[0], -1)
        v = exact_velocity(self.data, self.interpolant)(flat, t)
        return itp.convert(self.interpolant, v, flat, t, "velocity", self.kind).reshape(x.shape)


def _method(data=GAUSSIAN, path=PATHS["linear"], prediction="velocity", **fields):
    kind = {"velocity": "velocity", "noise": "eps", "score": "score"}[prediction]
    return Flow(model=ExactVelocityNet(data, path, kind), image_shape=(1, 1, 2), path=path,
                prediction=prediction, **fields)


@pytest.mark.parametrize("prediction", ["velocity", "noise"])
@pytest.mark.parametrize("solver", ["heun", "dpm_solver_pp_2m", "euler"])
def test_shared_solvers_through_the_denoiser_follow_the_flow_ode(solver, prediction):
    """Heun, DPM-Solver++(2M) and Euler (64 steps) on the flow model's `denoiser_model` give,
    within 1e-4, what the same solver gives on the data's exact denoiser (the conversion is
    exact), and land within the solver's own error (Heun, DPM-Solver++(2M) 1e-2, Euler 0.2) of
    the exact ODE endpoint: the EDM grid starts at x = 80 x1, x_t = (80 / 81) x1 at t = 80 / 81
    on the linear path, carried to t = 0 by the exact Gaussian map `analytic.gaussian_ode_flow`
    (sigma 80 -> 0 in EDM's coordinates); a noise-predicting model gives the same. Negative
    control: the model of the data shifted by 0.1 fails the 1e-4 check."""
    x1 = X1[:64]
    sampler = _method().sampler(method=solver, num_steps=64)
    run = lambda m: m.sample({}, jax.random.key(0), x1.reshape(64, 1, 1, 2),
                             sampler=sampler)
    x, stats = run(_method(prediction=prediction))
    reference, _ = solvers.solve(sampler, solvers.DenoiserModel(GAUSSIAN.denoiser),
                                 jax.random.key(0), x1)
    np.testing.assert_allclose(x.reshape(64, 2), reference, atol=1e-4)
    exact = analytic.gaussian_ode_flow(80.0 * x1, GAUSSIAN.means[0], GAUSSIAN.covs[0], 80.0, 0.0)
    np.testing.assert_allclose(x.reshape(64, 2), exact, atol=0.2 if solver == "euler" else 1e-2)
    assert float(stats["nfe"]) == {"heun": 127, "dpm_solver_pp_2m": 64, "euler": 64}[solver]
    shifted = analytic.gaussian(GAUSSIAN.means[0] + 0.1, GAUSSIAN.covs[0])
    wrong, _ = run(_method(data=shifted, prediction=prediction))
    assert float(jnp.max(jnp.abs(wrong.reshape(64, 2) - reference))) > 1e-4


def test_the_flow_samplers_of_the_method_report_their_evaluations():
    """Through `Flow.sample`: Euler N, Heun 2N, SDE N - 1 + 1, dopri5 1 + 6 steps, all near the
    exact endpoint of the Gaussian data (dopri5 within 1e-4)."""
    method = _method()
    x1 = X1[:64].reshape(64, 1, 1, 2)
    exact = gaussian_endpoint(X1[:64], PATHS["linear"])
    for name, want in (("flow_euler", 16), ("flow_heun", 32), ("flow_sde", 16)):
        x, stats = method.sample({}, jax.random.key(0), x1,
                                 sampler=method.sampler(method=name, num_steps=16))
        assert float(stats["nfe"]) == want and bool(jnp.all(jnp.isfinite(x))), name
    x, stats = method.sample({}, jax.random.key(0), x1,
                             sampler=method.sampler(method="flow_dopri5", rtol=1e-6, atol=1e-6))
    np.testing.assert_allclose(x.reshape(64, 2), exact, atol=1e-4)
    assert (int(stats["nfe"]) - 1) % 6 == 0


@pytest.mark.parametrize("prediction", ["velocity", "noise"])
def test_the_loss_of_the_exact_model_is_the_closed_form_minimum(prediction):
    """method.loss of the exact network equals E_t tr Cov(target | x_t) / d (t ~ U[0, 1]; per
    eigen-direction lam of C: Var(v | x_t) = 1 + lam - (t - (1 - t) lam)^2 / ((1 - t)^2 lam +
    t^2), Var(eps | x_t) = 1 - t^2 / ((1 - t)^2 lam + t^2)) within 4 standard errors;
    negative control: the output scaled by 1.3 is rejected by the same check."""
    lam = np.linalg.eigvalsh(np.asarray(GAUSSIAN.covs[0]))
    if prediction == "velocity":
        var = lambda t: np.mean(1 + lam - (t - (1 - t) * lam) ** 2 / ((1 - t) ** 2 * lam + t**2))
    else:
        var = lambda t: np.mean(1 - t**2 / ((1 - t) ** 2 * lam + t**2))
    minimum = integrate.quad(var, 0.0, 1.0)[0]
    method = _method(prediction=prediction)
    n = 20000
    x = GAUSSIAN.sample(jax.random.key(5), n).reshape(n, 1, 1, 2)
    batch = {"image": x, "label": jnp.zeros((n,), jnp.int32)}
    loss = float(method.loss({}, batch, jax.random.key(6))[0])
    t = method.sample_t(jax.random.key(7), n)
    eps = jax.random.normal(jax.random.key(8), x.shape)
    per_example = method.per_example_loss(method.network({}), x, t, eps)
    se = float(jnp.std(per_example)) / math.sqrt(n)
    assert abs(loss - minimum) < 4 * se, (loss, minimum, se)
    scaled = lambda x_t, t: 1.3 * method.network({})(x_t, t)
    wrong = float(jnp.mean(method.per_example_loss(scaled, x, t, eps)))
    assert not abs(wrong - minimum) < 4 * se, (wrong, minimum, se)


def test_guidance_on_the_first_channels_keeps_the_conditional_output_on_the_others():
    """guidance_channels = 1 on a class-conditional exact model of a two-class mixture: channel 0
    is the guided velocity, channel 1 the conditional one (DiT's 3 of 4 channels, here 1 of 2)."""
    data = analytic.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[1.0, 1.0], [-1.0, -1.0]]),
                                    jnp.array([0.2 * jnp.eye(2)] * 2), labels=jnp.array([0, 1]))

    classes = [analytic.gaussian(data.means[k], data.covs[k]) for k in range(2)]

    class Conditional(nn.Module):
        @nn.compact
        def __call__(self, x, t, cond=None, train=False):
            flat = x.reshape(x.shape[0], -1)
            v0, v1, v_null = (exact_velocity(d, PATHS["linear"])(flat, t)
                              for d in classes + [data])
            c = cond[:, None]
            return jnp.where(c == 0, v0, jnp.where(c == 1, v1, v_null)).reshape(x.shape)

    method = Flow(model=Conditional(), image_shape=(1, 1, 2), num_classes=2)
    x = X1[:8].reshape(8, 1, 1, 2)
    t, cond = jnp.full((8,), 0.5), jnp.zeros((8,), jnp.int32)
    def velocity(sampler, t):  # one compiled program per sampler, not op by op
        return jax.jit(lambda x, t, c: method.velocity_fn({}, c, sampler)(x, t, c))(x, t, cond)

    full = velocity(method.sampler(guidance_scale=3.0), t)
    part = velocity(method.sampler(guidance_scale=3.0, guidance_channels=1), t)
    plain = velocity(method.sampler(), t)
    np.testing.assert_allclose(part[..., 0], full[..., 0], rtol=1e-5)
    np.testing.assert_allclose(part[..., 1], plain[..., 1], rtol=1e-5)
    assert float(jnp.max(jnp.abs(full[..., 1] - plain[..., 1]))) > 1e-2  # guidance acts
    # at t = 1 (alpha = 0) the configs' finite upper limit 1e9 still guides
    t1 = jnp.ones((8,))
    limited = method.sampler(guidance_scale=3.0, guidance_sigma_hi=1e9)
    np.testing.assert_allclose(velocity(limited, t1),
                               velocity(method.sampler(guidance_scale=3.0), t1), rtol=1e-5)


def test_the_digits_config_builds_and_rejects_bad_names():
    """Every flow key reaches the method; a wrong name is a one-line ConfigError."""
    from diffusion_jax.errors import ConfigError

    config = digits_rectified_flow.get_config()
    method = builders.build_method(config)
    assert isinstance(method, Flow) and method.time_scale == 999.0
    assert set(flow_samplers.SAMPLERS) <= set(method.sampler_names)
    for key, value in (("interpolant", "cosine"), ("prediction", "x0"),
                       ("t_distribution", "beta"), ("loss_weighting", "velocity")):
        bad = digits_rectified_flow.get_config()
        bad.flow[key] = value
        with pytest.raises(ConfigError):
            builders.build_method(bad)


@pytest.mark.slow
def test_a_few_steps_of_the_digits_config_through_the_launcher(tmp_path):
    """launch.py trains the digits flow config (tiny network) for 4 steps and samples with
    the SDE sampler, end to end."""
    result = launch_one_device(
        "--config=configs/flow/digits_rectified_flow.py", f"--workdir={tmp_path}",
        "--config.model.nf=8", "--config.model.attn_resolutions=()",
        "--config.training.num_steps=4", "--config.training.log_every=2",
        "--config.training.checkpoint_every=4", "--config.training.preview_samples=0",
        "--config.sampling.num_samples=4", "--config.sampling.batch_size=4",
        "--config.sampling.method=flow_sde", "--config.sampling.num_steps=8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "samples" / "step_4.npz").exists()


def test_the_sit_xl2_config_has_sits_parameter_count_and_settings():
    """configs/flow/imagenet256_sit_xl2.py: DiT-XL/2 with learn_sigma on 32x32x4 latents and
    1000 classes is 674,834,720 parameters (FRONTIER.md section 2), sampled with the SDE, 250
    points, guidance 1.5, velocity on the linear path."""
    from configs.flow import imagenet256_sit_xl2

    config = imagenet256_sit_xl2.get_config()
    latent = builders.build_method(config)  # on the 32x32x4 latents of the SD VAE
    assert latent.noise_shape == (32, 32, 4) and latent.fixed_scale == 0.18215
    method = latent.inner
    shapes = jax.eval_shape(method.init_params, jax.random.key(0))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == 674_834_720
    sampler = builders.build_sampler(config, method)
    assert (sampler.method, sampler.num_steps, sampler.guidance_scale) == ("flow_sde", 250, 1.5)
    assert method.prediction == "velocity" and isinstance(method.path, itp.Linear)
    assert method.num_classes == 1000


def test_inpainting_and_sdedit_run_on_a_flow_model_through_the_shared_solvers():
    """`Flow.edit` with Heun: inpainting keeps the known channel and fills the other with the
    data's conditional mean direction (finite, not the input); SDEdit at strength 0.8 carries a
    far-off point to the data (on average less than half as far from its mean as it started)."""
    method = _method()
    sampler = method.sampler(method="heun", num_steps=16)
    x = jnp.tile(jnp.array([[0.5, 5.0]]), (16, 1)).reshape(16, 1, 1, 2)
    mask = jnp.broadcast_to(jnp.array([1.0, 0.0]), x.shape)
    out = method.edit({}, jax.random.key(0), x, mask, sampler=sampler, task="inpaint",
                      strength=1.0)
    np.testing.assert_allclose(out[..., 0], x[..., 0], atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.max(jnp.abs(out[..., 1] - 5.0))) > 1.0
    edited = method.edit({}, jax.random.key(1), x, mask, sampler=sampler, task="sdedit",
                         strength=0.8)
    distance = lambda y: jnp.mean(jnp.linalg.norm(y.reshape(16, 2) - GAUSSIAN.means[0], axis=-1))
    assert float(distance(edited)) < 0.5 * float(distance(x))
