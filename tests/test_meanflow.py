"""MeanFlow (losses/meanflow.py, samplers/meanflow.py, methods/meanflow.py) against closed forms.

Ground truth written here: for data N(mu, diag(s2)) on z_t = (1 - t) x + t e the flow keeps
(z - m_t) / std_t per coordinate, m_t = (1 - t) mu, std_t = sqrt((1 - t)^2 s2 + t^2), so the
exact flow map is Phi_{t->r}(z) = m_r + std_r / std_t (z - m_t), the exact average velocity
u(z, t, r) = (z - Phi_{t->r}(z)) / (t - r) (the integral of v along the flow, divided by
t - r), and the instantaneous velocity v(z, t) = -mu + (d std_t / dt) / std_t (z - m_t).
Statistical checks take their tolerances from the standard error and are shown to reject a
wrong model (negative controls).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params

from configs.flow import digits_meanflow, imagenet256_meanflow_xl2
from diffusion_jax import builders
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import meanflow as objective
from diffusion_jax.methods.meanflow import MeanFlow
from diffusion_jax.models.dit import DiT
from diffusion_jax.samplers import meanflow as mf_samplers

MU = jnp.array([0.7, -1.2])
S2 = jnp.array([0.09, 2.25])  # anisotropic: standard deviations 0.3 and 1.5


def _std(t):
    return jnp.sqrt((1.0 - t) ** 2 * S2 + t**2)


def _col(a, z):
    return jnp.reshape(a, a.shape + (1,) * (z.ndim - a.ndim))


def exact_flow_map(z, t, r):
    """Phi_{t->r}(z) of the Gaussian data; z (B, ..., 2), t and r (B,)."""
    t, r = _col(t, z), _col(r, z)
    return (1.0 - r) * MU + _std(r) / _std(t) * (z - (1.0 - t) * MU)


def exact_u(z, t, r):
    """The average velocity (z - Phi_{t->r}(z)) / (t - r), t > r."""
    return (z - exact_flow_map(z, t, r)) / _col(t - r, z)


def exact_v(z, t):
    """The instantaneous velocity: the derivative of the flow at t."""
    tt = _col(t, z)
    d_std = (tt - (1.0 - tt) * S2) / _std(tt)
    return -MU + d_std / _std(tt) * (z - (1.0 - tt) * MU)


def _points(n=64, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    t = jax.random.uniform(k1, (n,), minval=0.2, maxval=1.0)
    r = t - jax.random.uniform(k2, (n,), minval=0.05, maxval=0.19) * (t / 0.2)
    z = jax.random.normal(k3, (n, 2)) * 1.5
    return z, t, r


def test_the_exact_average_velocity_is_the_integral_of_v_along_the_flow():
    """The closed form itself: u(z, t, r) = 1 / (t - r) int_r^t v(z_tau, tau) dtau on the
    exact trajectory through z at t (midpoint rule, 2000 nodes)."""
    z, t, r = _points(8)
    taus = r[None] + (t - r)[None] * (jnp.arange(2000) + 0.5)[:, None] / 2000  # (K, B)
    integral = jnp.mean(jax.vmap(lambda tau: exact_v(exact_flow_map(z, t, tau), tau))(taus), 0)
    np.testing.assert_allclose(exact_u(z, t, r), integral, rtol=1e-4, atol=1e-5)


def test_the_meanflow_target_of_the_exact_u_is_the_exact_u():
    """u_tgt = v - (t - r) du/dt with du/dt the jvp in (z, t, r) with tangents (v, 1, 0), the
    exact v and the exact u as the network: u_tgt = u (the MeanFlow identity, Eq. 6) to float32
    precision. Negative control: the tangent (v, 0, 0), which drops d_t u, misses by > 1e-2."""
    z, t, r = _points()
    v = exact_v(z, t)
    u, u_tgt = objective.target(exact_u, z, t, r, v)
    np.testing.assert_allclose(u_tgt, exact_u(z, t, r), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(u, exact_u(z, t, r), rtol=1e-6)
    du_no_t = jax.jvp(exact_u, (z, t, r), (v, jnp.zeros_like(t), jnp.zeros_like(r)))[1]
    wrong = v - _col(t - r, v) * du_no_t
    assert float(jnp.max(jnp.abs(wrong - exact_u(z, t, r)))) > 1e-2


def test_the_target_is_not_differentiated():
    """The target is stop-gradient: d/d(scale) of |u - sg(u_tgt)|^2 for u = scale u_exact is
    2 (u - u_tgt) u_exact, not the derivative through u_tgt (which is zero here: u_tgt = u)."""
    z, t, r = _points(16)
    v = exact_v(z, t)

    def loss(scale):
        u, u_tgt = objective.target(lambda z, t, r: scale * exact_u(z, t, r), z, t, r, v)
        return jnp.sum((u - u_tgt) ** 2)
    scale = 1.3
    u, u_tgt = objective.target(lambda z, t, r: scale * exact_u(z, t, r), z, t, r, v)
    expected = jnp.sum(2 * (u - u_tgt) * exact_u(z, t, r))
    np.testing.assert_allclose(jax.grad(loss)(scale), expected, rtol=1e-5)
    assert abs(float(expected)) > 1.0


class ExactNetwork(nn.Module):
    """The exact average velocity as a network u(z, t, cond, h=t - r): no parameters."""

    @nn.compact
    def __call__(self, x, t, cond=None, train=False, h=None):
        h = jnp.zeros_like(t) if h is None else h
        r = t - h
        at_t = exact_v(x, t)
        away = exact_u(x, t, jnp.where(h > 0, r, t - 1.0))
        return jnp.where(_col(h > 0, x), away, at_t)


def _exact_method(**kw):
    return MeanFlow(model=ExactNetwork(), image_shape=(1, 1, 2), **kw)


N = 4000
Z1 = jax.random.normal(jax.random.key(7), (N, 1, 1, 2))


def moments_match(samples, k=4.0):
    """Mean and per-coordinate variance within k standard errors of N(MU, diag(S2)) and the
    correlation within k / sqrt(n) of 0."""
    x = np.asarray(samples).reshape(-1, 2)
    n = x.shape[0]
    mean_ok = np.all(np.abs(x.mean(0) - MU) < k * np.sqrt(S2 / n))
    var_ok = np.all(np.abs(x.var(0, ddof=1) - S2) < k * S2 * math.sqrt(2.0 / (n - 1)))
    corr_ok = abs(np.corrcoef(x.T)[0, 1]) < k / math.sqrt(n)
    return bool(mean_ok and var_ok and corr_ok)


@pytest.mark.parametrize("steps", [1, 2])
def test_sampling_the_exact_u_reproduces_the_data_moments(steps):
    """The method's 'meanflow' chain with the exact u as its network: one jump
    z_0 = z_1 - u(z_1, 1, 0) (1 NFE) and two jumps (1 -> 0.5 -> 0) reach the data's mean and
    covariance. Negative control: the same network fed (t, r) where it expects (t, t - r)
    (`time_inputs='t_r'`) jumps with the instantaneous velocity at t = 1 (h = r = 0) and
    collapses onto the mean: rejected by the same check."""
    method = _exact_method()
    sampler = method.sampler(num_steps=steps)
    x, stats = method.sample({}, jax.random.key(0), Z1, sampler=sampler)
    assert int(stats["nfe"]) == steps
    assert moments_match(x)
    wrong, _ = _exact_method(time_inputs="t_r").sample({}, jax.random.key(0), Z1,
                                                       sampler=sampler)
    assert not moments_match(wrong)


def test_the_sampler_jumps_with_the_average_velocity():
    """samplers.meanflow.sample on [1, 0.5, 0]: z_0.5 = z_1 - 0.5 u(z_1, 1, 0.5), z_0 = z_0.5 -
    0.5 u(z_0.5, 0.5, 0): written out with the exact flow map, which it equals."""
    z1 = Z1[:16, 0, 0]
    out = mf_samplers.sample(exact_u, z1, ts=mf_samplers.time_grid(2))
    ones = jnp.ones(16)
    np.testing.assert_allclose(out, exact_flow_map(exact_flow_map(z1, ones, 0.5 * ones),
                                                   0.5 * ones, 0 * ones), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mf_samplers.time_grid(1), [1.0, 0.0])


def test_the_time_sampler_orders_t_and_r_and_sets_r_to_t_for_the_first_share():
    """sample_tr: the first 75% have r = t, the rest r < t; there logit(t) is the larger of two
    N(-0.4, 1) draws, mean -0.4 + 1 / sqrt(pi), variance 1 - 1 / pi (logit(r): -0.4 - 1 /
    sqrt(pi)), within 4 standard errors. Negative control: the unordered first draw (mean
    -0.4) is rejected by the same check."""
    n = 40000
    t, r = objective.sample_tr(jax.random.key(3), n, -0.4, 1.0, 0.75)
    k = int(0.75 * n)
    assert bool(jnp.all(r[:k] == t[:k])) and bool(jnp.all(r[k:] < t[k:]))
    logit = lambda p: np.log(np.asarray(p) / (1 - np.asarray(p)))
    se = math.sqrt((1 - 1 / math.pi) / (n - k))
    assert abs(logit(t[k:]).mean() - (-0.4 + 1 / math.sqrt(math.pi))) < 4 * se
    assert abs(logit(r[k:]).mean() - (-0.4 - 1 / math.sqrt(math.pi))) < 4 * se
    first = jax.nn.sigmoid(-0.4 + jax.random.normal(jax.random.key(3), (2, n)))[0, k:]
    assert abs(logit(first).mean() - (-0.4 + 1 / math.sqrt(math.pi))) > 4 * se


def test_condition_dropout_drops_a_binomial_prefix():
    """first_dropped: a prefix of the batch whose length has mean n p and variance n p (1 - p)
    (over 400 draws, within 4 standard errors)."""
    n, p = 256, 0.1
    masks = np.asarray(jax.vmap(lambda k: objective.first_dropped(k, n, p))(
        jax.random.split(jax.random.key(4), 400)))
    m = masks.sum(1)
    assert all((mask == (np.arange(n) < count)).all() for mask, count in zip(masks, m))
    assert abs(m.mean() - n * p) < 4 * math.sqrt(n * p * (1 - p) / 400)


def test_the_guidance_target_is_the_official_combination_inside_its_interval():
    """v_g = omega v + (1 - omega - kappa) v_uncond + kappa v_cond for t in [t_start, t_end],
    v outside; kappa = 0 is v_uncond + omega (v - v_uncond) and reads no v_cond."""
    rng = np.random.default_rng(0)
    v, vu, vc = (jnp.asarray(rng.standard_normal((4, 3)), jnp.float32) for _ in range(3))
    t = jnp.array([0.1, 0.5, 0.75, 0.9])
    out = objective.guided_velocity(v, vu, vc, t, omega=0.2, kappa=0.92, t_start=0.3,
                                    t_end=0.75)
    inside = 0.2 * v + (1 - 0.2 - 0.92) * vu + 0.92 * vc
    out, inside, v = np.asarray(out), np.asarray(inside), np.asarray(v)
    np.testing.assert_allclose(out[1:3], inside[1:3], rtol=1e-6)
    np.testing.assert_allclose(out[[0, 3]], v[[0, 3]], rtol=1e-6)
    plain = objective.guided_velocity(jnp.asarray(v), vu, None, t, omega=3.0, kappa=0.0)
    np.testing.assert_allclose(plain, vu + 3.0 * (v - vu), rtol=1e-5)


def test_the_guided_field_has_the_effective_scale_omega_over_one_minus_kappa():
    """The network's conditional velocity at the fixed point of training, v_c <- E[v_g] =
    omega v* + kappa v_c + (1 - omega - kappa) v_u, is v_u + omega / (1 - kappa) (v* - v_u)
    (the paper's omega' = omega / (1 - kappa), Eq. 19). Negative control: scale omega."""
    rng = np.random.default_rng(1)
    v_star, v_u = rng.standard_normal(5), rng.standard_normal(5)
    omega, kappa = 0.2, 0.92
    v_c = np.zeros(5)
    for _ in range(300):  # contracts by kappa per iteration
        v_c = np.asarray(objective.guided_velocity(v_star[None], v_u[None], v_c[None],
                                                   jnp.array([0.5]), omega=omega,
                                                   kappa=kappa))[0]
    np.testing.assert_allclose(v_c, v_u + omega / (1 - kappa) * (v_star - v_u), rtol=1e-4)
    assert np.abs(v_c - (v_u + omega * (v_star - v_u))).max() > 0.1


def test_the_adaptive_weight_normalises_each_example():
    """raw = sum (u - u_tgt)^2 per example, weighted = raw / (raw + c)^p; p = 0 is raw."""
    u = jnp.array([[1.0, 2.0], [0.0, 0.1]])
    tgt = jnp.zeros((2, 2))
    weighted, raw = objective.adaptive_loss(u, tgt, 1.0, 0.01)
    np.testing.assert_allclose(raw, [5.0, 0.01], rtol=1e-6)
    np.testing.assert_allclose(weighted, [5.0 / 5.01, 0.5], rtol=1e-6)
    np.testing.assert_allclose(objective.adaptive_loss(u, tgt, 0.0, 0.01)[0], raw)
    grad = jax.grad(lambda u: jnp.sum(objective.adaptive_loss(u, tgt, 1.0, 0.01)[0]))(u)
    np.testing.assert_allclose(grad, 2 * u / jnp.array([[5.01], [0.02]]), rtol=1e-5)


TINY = dict(depth=1, hidden_size=32, num_heads=2, patch_size=2, num_classes=3, h_embedding=True)


def test_the_loss_by_value_on_a_tiny_network():
    """The method's per-example loss on a tiny random DiT, guided (omega 0.6, kappa 0.3 on
    [0, 0.8]) with the first example dropped, against the loss written out here with du/dt by a
    five-point difference along (v_g, 1, 0) (step 1e-2; agreement 1e-3 relative). Negative
    control: the flow-matching target v_g (no du/dt term) misses by more than that."""
    model = DiT(**TINY)
    method = MeanFlow(model=model, image_shape=(4, 4, 2), omega=0.6, kappa=0.3, t_end=0.8,
                      num_classes=3, label_dropout=0.1)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 4, 4, 2)), jnp.float32)
    e = jnp.asarray(rng.standard_normal((4, 4, 4, 2)), jnp.float32)
    labels = jnp.array([0, 1, 2, 1])
    t, r = jnp.array([0.7, 0.5, 0.9, 0.6]), jnp.array([0.7, 0.2, 0.4, 0.6])
    drop = jnp.array([True, False, False, False])
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, labels)
    params = random_params(shapes, scale=0.15)["params"]
    weighted, raw, _ = jax.jit(method.per_example_loss)(params, x, labels, t, r, e, drop)

    @jax.jit
    def net(z, t, r, y):
        return model.apply({"params": params}, z, t, y, h=t - r)
    z = (1 - t)[:, None, None, None] * x + t[:, None, None, None] * e
    v = e - x
    null = jnp.full(4, 3)
    inside = (t <= 0.8)[:, None, None, None]
    v_g = jnp.where(inside, 0.6 * v + 0.1 * net(z, t, t, null) + 0.3 * net(z, t, t, labels), v)
    v_g = v_g.at[0].set(v[0])
    y = labels.at[0].set(3)
    along = lambda s: net(z + s * v_g, t + s, r, y)  # noqa: E731
    h = 1e-2
    du_dt = (8 * (along(h) - along(-h)) - (along(2 * h) - along(-2 * h))) / (12 * h)
    u = net(z, t, r, y)
    u_tgt = v_g - (t - r)[:, None, None, None] * du_dt
    expected_raw = jnp.sum((u - u_tgt) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(raw, expected_raw, rtol=1e-3)
    np.testing.assert_allclose(weighted, expected_raw / (expected_raw + 0.01), rtol=1e-3)
    fm_raw = jnp.sum((u - v_g) ** 2, axis=(1, 2, 3))
    rows = np.asarray(t != r)
    assert np.all(np.abs(np.asarray(fm_raw - expected_raw))[rows]
                  > 1e-2 * np.asarray(expected_raw)[rows]), (fm_raw, expected_raw)


@pytest.mark.slow
def test_the_loss_runs_on_a_batch_and_trains_the_network():
    """loss(params, batch, rng): a finite scalar below 1 (p = 1 normalises each example) with
    finite gradients on every parameter, and metrics mse, v_loss."""
    model = DiT(**TINY)
    method = MeanFlow(model=model, image_shape=(4, 4, 2), num_classes=3, label_dropout=0.1)
    params = random_params(jax.eval_shape(method.init_params, jax.random.key(0)), scale=0.2)
    batch = {"image": jnp.ones((8, 4, 4, 2)), "label": jnp.arange(8) % 3}
    (value, metrics), grads = jax.jit(jax.value_and_grad(
        lambda p: method.loss(p, batch, jax.random.key(1)), has_aux=True))(params)
    assert 0.0 < float(value) < 1.0 and set(metrics) == {"mse", "v_loss"}
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["final_layer"]["linear"]["kernel"]).max()) > 0


def test_the_xl2_config_has_meanflows_parameter_count_and_settings():
    """configs/flow/imagenet256_meanflow_xl2.py: DiT-XL/2 with the h embedder on 32x32x4
    latents and 1000 classes is 676,440,592 parameters (the official models_dit.py count;
    the paper's 676M, within 0.1%); 1-step sampler; adamw betas (0.9, 0.95), lr 1e-4;
    the effective guidance scale omega / (1 - kappa) = 2.5."""
    config = imagenet256_meanflow_xl2.get_config()
    latent = builders.build_method(config)  # on the SD VAE's 32x32x4 latents
    assert latent.noise_shape == (32, 32, 4)
    method = latent.inner
    shapes = jax.eval_shape(method.init_params, jax.random.key(0))
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    assert count == 676_440_592 and abs(count / 676.4e6 - 1) < 1e-3
    assert method.sampler_names == ("meanflow",)
    assert builders.build_sampler(config, method).num_steps == 1
    assert (config.optim.name, config.optim.lr, config.optim.beta2) == ("adamw", 1e-4, 0.95)
    assert (method.P_mean, method.P_std, method.data_proportion) == (-0.4, 1.0, 0.75)
    assert method.omega / (1 - method.kappa) == pytest.approx(2.5)
    assert config.training.batch_size * config.training.num_steps // 1_281_167 == 239


@pytest.mark.parametrize("change, message", [
    ({"model.h_embedding": False}, "h_embedding"),
    ({"meanflow.omega": 2.0}, "class_conditional"),
    ({"meanflow.time_inputs": "t"}, "time inputs"),
    ({"meanflow.data_proportion": 1.5}, "data_proportion"),
    ({"sampling.guidance_scale": 2.0}, "class_conditional"),
    ({"model.class_conditional": True, "sampling.guidance_scale": 2.0}, "trained in"),
    ({"sampling.method": "flow_euler"}, "unknown sampler"),
])
def test_bad_meanflow_configs_are_one_line_errors(change, message):
    config = digits_meanflow.get_config()
    for key, value in change.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        builders.build_method(config)


@pytest.mark.slow
def test_a_few_steps_of_the_digits_config_through_the_launcher(tmp_path):
    """launch.py trains the digits MeanFlow config (tiny DiT) for 4 steps and samples in two
    jumps, end to end."""
    from helpers import launch_one_device

    result = launch_one_device(
        "--config=configs/flow/digits_meanflow.py", f"--workdir={tmp_path}",
        "--config.model.depth=1", "--config.model.hidden_size=32",
        "--config.training.num_steps=4", "--config.training.log_every=2",
        "--config.training.checkpoint_every=4", "--config.training.preview_samples=0",
        "--config.sampling.num_samples=4", "--config.sampling.batch_size=4",
        "--config.sampling.num_steps=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "samples" / "step_4.npz").exists()
