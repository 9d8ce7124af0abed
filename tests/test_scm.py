"""sCM / TrigFlow (Lu & Song 2024) against closed forms: the TrigFlow <-> EDM conversions and
the velocity of Gaussian data, the tangent g of the exact consistency function, the discrete
objective's gradient tending to the continuous one, JVPs through an attention network, one- and
two-step samples of the exact consistency function, and sCD with an exact teacher."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from configs.scm import digits_scd, digits_sct
from diffusion_jax import analytic, builders, preconditioning
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import scm as objectives
from diffusion_jax.methods.scm import SCM
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.processes import trigflow

SD = trigflow.SIGMA_D
MEAN = jnp.array([0.3, -0.2, 0.1, 0.5])
STD = jnp.array([0.2, 0.5, 0.35, 0.1])
GAUSSIAN = analytic.gaussian(MEAN, jnp.diag(STD**2))
SHAPE = (2, 2, 1)  # images of the 4-D Gaussian


def exact_f(x_t, t):
    """f*(x_t, t): the PF-ODE map of the Gaussian from t to 0, x_t (B, 4). In the EDM convention
    it is `analytic.gaussian_ode_flow` from sigma = sigma_d tan t to 0."""
    t = jnp.broadcast_to(t, x_t.shape[:1])
    return analytic.gaussian_ode_flow(trigflow.to_edm(x_t, t), MEAN, jnp.diag(STD**2),
                                      trigflow.sigma_of_t(t), 0.0)


def exact_velocity(x_t, t):
    """The PF-ODE velocity of the Gaussian from its exact EDM denoiser."""
    D = lambda x, sigma: GAUSSIAN.denoiser(x, sigma)
    return trigflow.velocity_of_edm_denoiser(D)(x_t, t)


def exact_F(y, t, cond=None):
    """F* of f*: (cos t x_t - f*(x_t, t)) / (sin t sigma_d) at x_t = sigma_d y (any shape)."""
    flat = SD * y.reshape(y.shape[0], -1)
    out = trigflow.velocity_from_denoiser(flat, t, exact_f(flat, t)) / SD
    return out.reshape(y.shape)


def diffusion_F(y, t, cond=None):
    """The exact diffusion model's F = v / sigma_d: its one-step f is E[x0 | x_t]."""
    flat = SD * y.reshape(y.shape[0], -1)
    return (exact_velocity(flat, t) / SD).reshape(y.shape)


# --- TrigFlow ---------------------------------------------------------------------------------
def test_trigflow_and_edm_states_and_levels_convert():
    t = jnp.array([0.01, 0.4, 1.0, trigflow.T_MAX])
    x_t = jax.random.normal(jax.random.key(0), (4, 3))
    np.testing.assert_allclose(trigflow.t_of_sigma(trigflow.sigma_of_t(t)), t, rtol=1e-6)
    np.testing.assert_allclose(trigflow.from_edm(trigflow.to_edm(x_t, t), trigflow.sigma_of_t(t)),
                               x_t, rtol=1e-5, atol=1e-6)
    assert abs(float(trigflow.sigma_of_t(trigflow.T_MAX)) - 80.0) < 1e-3
    # tan t = e^tau / sigma_d with tau the proposal's normal draw
    tau = -1.0 + 1.4 * jax.random.normal(jax.random.key(1), (1000,))
    t = trigflow.sample_t(jax.random.key(1), 1000, -1.0, 1.4)
    np.testing.assert_allclose(jnp.log(trigflow.sigma_of_t(t)), tau, atol=1e-4)


def test_an_edm_preconditioned_network_is_the_trigflow_network_minus_its_output():
    """EDM's D(x, sigma) = c_skip x + c_out F_edm(c_in x, ln sigma / 4) equals TrigFlow's
    x0_hat = cos t x_t - sin t sigma_d F at x_t = cos t x with F = -F_edm(x_t / sigma_d, c_noise)."""
    w = jax.random.normal(jax.random.key(0), (3, 3))
    F_edm = lambda x, c_noise, cond=None: jnp.tanh(x @ w) + c_noise[:, None]
    D = preconditioning.precondition(F_edm, preconditioning.EDMPrecond(SD))
    sigma = jnp.array([0.01, 0.3, 2.0, 60.0])
    x = 2.0 * jax.random.normal(jax.random.key(1), (4, 3))
    t, x_t = trigflow.t_of_sigma(sigma), trigflow.from_edm(x, sigma)
    trig = lambda sign: trigflow.denoiser_from_velocity(
        x_t, t, SD * sign * F_edm(x_t / SD, jnp.log(sigma) / 4))
    np.testing.assert_allclose(trig(-1.0), D(x, sigma), rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(trig(1.0) - D(x, sigma)))) > 0.1  # the sign matters


def test_velocity_of_the_exact_denoiser_is_the_time_derivative_of_the_ode_flow():
    """d/dt of x_t(t) = cos t x_edm(sigma_d tan t) along the exact EDM flow (central
    differences) equals v = (cos t x_t - E[x0 | x_t]) / sin t; the velocity target's sign is
    rejected by the same check."""
    x0 = jax.random.normal(jax.random.key(0), (64, 4))
    path = jax.jit(lambda t: trigflow.from_edm(
        analytic.gaussian_ode_flow(x0, MEAN, jnp.diag(STD**2), 1.0, trigflow.sigma_of_t(t)),
        trigflow.sigma_of_t(t)))
    for t in (0.3, 0.9, 1.4):
        h = 1e-3
        fd = (path(jnp.float32(t + h)) - path(jnp.float32(t - h))) / (2 * h)
        v = jax.jit(exact_velocity)(path(jnp.float32(t)), jnp.float32(t))
        err = lambda a: float(jnp.max(jnp.abs(a - fd)) / jnp.max(jnp.abs(fd)))
        assert err(v) < 2e-3, t
        assert err(-v) > 0.5


def test_tangent_of_the_exact_consistency_function_vanishes():
    """f* is constant along the PF-ODE, so g = cos t df*/dt = 0 with r = 1 (the JVP terms
    included); the diffusion model's F (its f is the denoiser E[x0 | x_t]) is rejected."""
    x_t = trigflow.noisy(GAUSSIAN.sample(jax.random.key(0), 256),
                         SD * jax.random.normal(jax.random.key(1), (256, 4)),
                         jnp.linspace(0.05, 1.5, 256))
    t = jnp.linspace(0.05, 1.5, 256)
    v = exact_velocity(x_t, t)
    tangent = jax.jit(lambda F: objectives.network_and_tangent(F, x_t, t, v, 1.0, SD)[1],
                      static_argnums=0)
    g, g_diffusion = tangent(exact_F), tangent(diffusion_F)
    scale = float(jnp.sqrt(jnp.mean(v**2)))
    assert float(jnp.sqrt(jnp.mean(g**2))) < 1e-4 * scale
    assert float(jnp.sqrt(jnp.mean(g_diffusion**2))) > 0.05 * scale


def test_warmup_and_normalisation():
    assert float(objectives.tangent_warmup(250, 1000)) == 0.25
    assert float(objectives.tangent_warmup(5000, 1000)) == 1.0
    assert float(objectives.tangent_warmup(0, 0)) == 1.0
    g = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(objectives.normalize_tangent(g, 0.1), [[3 / 5.1, 4 / 5.1], [0, 0]],
                               rtol=1e-6)
    loss = objectives.scm_loss(jnp.ones((2, 2)), g, jnp.array([0.0, jnp.log(2.0)]))
    np.testing.assert_allclose(loss, [12.5, jnp.log(2.0)], rtol=1e-6)


# --- the discrete objective tends to the continuous one ---------------------------------------
class SmoothMLP(nn.Module):
    """A small network smooth in t (features cos t, sin t), so the O(dt) term stays small."""

    @nn.compact
    def __call__(self, y, t, cond=None, train=False):
        h = jnp.concatenate([y, jnp.cos(t)[:, None], jnp.sin(t)[:, None]], axis=-1)
        for _ in range(2):
            h = jnp.tanh(nn.Dense(32)(h))
        return nn.Dense(y.shape[-1])(h)


def test_discrete_consistency_gradient_over_dt_tends_to_the_continuous_gradient():
    """(1/dt) grad E[(1 / (sigma_d tan t)) ||f(x_t, t) - f-(x_{t-dt}, t-dt)||^2] / D -> grad of
    ||F - F- - g||^2 / D (r = 1, no normalisation, u = 0), sCT pairs x_{t-dt} = cos(t-dt) x0 +
    sin(t-dt) z. The error falls linearly in dt; g without its JVP term (r = 0) is rejected."""
    model = SmoothMLP()
    x0 = GAUSSIAN.sample(jax.random.key(0), 32)
    z = SD * jax.random.normal(jax.random.key(1), (32, 4))
    t = jax.random.uniform(jax.random.key(2), (32,), minval=0.2, maxval=1.4)
    params = model.init(jax.random.key(3), x0, t)["params"]
    F = lambda p: (lambda y, s, cond=None: model.apply({"params": p}, y, s))
    f = lambda p, x, s: trigflow.consistency_function(F(p))(x, s)
    x_t = trigflow.noisy(x0, z, t)

    def discrete(p, dt):
        target = jax.lax.stop_gradient(f(p, trigflow.noisy(x0, z, t - dt), t - dt))
        w = 1.0 / trigflow.sigma_of_t(t)
        return jnp.mean(w * jnp.mean((f(p, x_t, t) - target) ** 2, axis=-1)) / dt

    def continuous(p, r):
        F_theta, g = objectives.network_and_tangent(F(p), x_t, t, trigflow.velocity(x0, z, t),
                                                    r, SD)
        return jnp.mean(objectives.scm_loss(F_theta, g, jnp.zeros_like(t)))

    flat = lambda tree: jnp.concatenate([a.ravel() for a in jax.tree.leaves(tree)])
    exact = flat(jax.jit(jax.grad(continuous))(params, 1.0))
    err = lambda grad: float(jnp.linalg.norm(flat(grad) - exact) / jnp.linalg.norm(exact))
    errors = [err(jax.jit(jax.grad(discrete))(params, dt)) for dt in (1e-2, 1e-3)]
    assert errors[1] < 0.02 and errors[1] < 0.3 * errors[0], errors
    without_jvp = flat(jax.jit(jax.grad(continuous))(params, 0.0))
    assert float(jnp.linalg.norm(without_jvp - exact) / jnp.linalg.norm(exact)) > 0.2


# --- JVP through attention --------------------------------------------------------------------
def test_jvp_through_ddpmpp_with_attention_matches_finite_differences():
    """jax.jvp of a DDPM++ with attention at 4x4 (random weights, so every layer passes signal)
    against central differences in (x, t): relative error 2e-3 at most (measured 5e-5,
    float32 differences with h = 0.01); dropping the t tangent (a 2% change of the derivative) is rejected."""
    model = NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                   resblock_type="biggan", embedding_type="positional")
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([0.4, 1.2])
    shapes = jax.eval_shape(model.init, jax.random.key(1), x, t)["params"]
    assert any("Attn" in name for name in shapes), list(shapes)
    params = helpers.random_params(shapes, scale=0.2)
    F = lambda x, t: model.apply({"params": params}, x, t)
    dx = jax.random.normal(jax.random.key(2), x.shape)
    h = 1e-2

    @jax.jit
    def jvp_and_fd(dt):
        jvp = jax.jvp(F, (x, t), (dx, dt))[1]
        return jvp, (F(x + h * dx, t + h * dt) - F(x - h * dx, t - h * dt)) / (2 * h)

    jvp, fd = jvp_and_fd(jnp.array([1.0, -0.5]))
    err = lambda a: float(jnp.linalg.norm(a - fd) / jnp.linalg.norm(fd))
    assert err(jvp) < 2e-3
    assert err(jvp_and_fd(jnp.zeros(2))[0]) > 2e-3


# --- sampling the exact consistency function ---------------------------------------------------
class ExactNetwork:
    """F* (or the diffusion model's F) as a backbone: apply(variables, y, c_noise = t, ...)."""

    def __init__(self, F):
        self.F = F

    def apply(self, variables, y, t, cond=None, train=False, rngs=None):
        return self.F(y, t)


def _exact_method(F):
    return SCM(model=ExactNetwork(F), image_shape=SHAPE, adaptive_weighting=False)


@pytest.mark.parametrize("steps", [1, 2])
def test_samples_of_the_exact_consistency_function_have_the_data_moments(steps):
    """One step from t_max and two steps through t_mid = 1.1: mean and variance per dimension
    within 4 standard errors of the data's (the start sin(t_max) sigma_d z is 2e-5 off the
    prior: far below them); the diffusion model's one-step denoiser, E[x0 | x_t], collapses the
    variance and is rejected by the same check."""
    n = 20_000
    x_init = jax.random.normal(jax.random.key(0), (n,) + SHAPE)

    def moments_ok(F):
        method = _exact_method(F)
        sampler = method.sampler(method="onestep" if steps == 1 else "multistep",
                                 num_steps=steps)
        x, stats = method.sample({"net": {}}, jax.random.key(1), x_init, sampler=sampler)
        assert float(stats["nfe"]) == steps
        x = np.asarray(x).reshape(n, -1)
        mean_ok = np.abs(x.mean(0) - MEAN) < 4 * STD / np.sqrt(n)
        var_ok = np.abs(x.var(0) - STD**2) < 4 * STD**2 * np.sqrt(2 / n)
        return bool(np.all(mean_ok) and np.all(var_ok))

    assert moments_ok(exact_F)
    assert not moments_ok(diffusion_F)


def test_multistep_needs_sigmas_beyond_two_steps_and_takes_explicit_ones():
    method = _exact_method(exact_F)
    with pytest.raises(ConfigError, match="needs sampling.sigmas"):
        method.check_sampler(method.sampler(method="multistep", num_steps=3))
    with pytest.raises(ConfigError, match="must decrease"):
        method.check_sampler(method.sampler(method="multistep", sigmas=(1.0, 2.0)))
    times = method.times(method.sampler(method="multistep", sigmas=(80.0, 2.0, 0.5)))
    np.testing.assert_allclose(times, np.arctan(np.array([80.0, 2.0, 0.5]) / SD), rtol=1e-6)
    assert method.times(method.sampler(method="multistep", num_steps=2))[1] == 1.1


# --- sCD with an exact teacher ---------------------------------------------------------------
class LinearInX(nn.Module):
    """F(y, t) = a(t) y + b(t), per pixel, a and b linear in 24 Gaussian bumps of t (local
    features: a global basis couples distant t and the bootstrapped objective then drifts): the
    exact F* of Gaussian data has this form."""

    @nn.compact
    def __call__(self, y, t, cond=None, train=False):
        centres = jnp.linspace(0.0, jnp.pi / 2, 24)
        phi = jnp.exp(-0.5 * ((t[:, None] - centres) / (centres[1] - centres[0])) ** 2)
        d = int(np.prod(y.shape[1:]))
        a = nn.Dense(d, kernel_init=nn.initializers.zeros)(phi)
        b = nn.Dense(d, kernel_init=nn.initializers.zeros)(phi)
        return (a * y.reshape(y.shape[0], -1) + b).reshape(y.shape)


def test_scd_with_an_exact_teacher_learns_the_exact_ode_endpoint_map():
    """sCD (tangent warm-up over 200 steps) of a student linear in x from the exact Gaussian
    teacher, 3000 Adam steps at 1e-3: f_theta(x_t, t) within 6% of the data's spread of
    f*(x_t, t) over t in [0.1, t_max] (measured 0.03; 0.005 at t = 0.1, 0.047 at t_max); the
    diffusion model's denoiser E[x0 | x_t] (what the objective learns without its JVP term) is
    rejected by the same check. Without the adaptive weighting and the tangent normalisation:
    with them this tiny student learns large t more slowly (measured 0.10 at t_max with both,
    0.20 with u(t) alone; at lr 1e-2 it drifts away)."""
    method = SCM(model=LinearInX(), image_shape=SHAPE, training_mode="scd",
                 teacher=helpers.ExactTeacher(GAUSSIAN, SHAPE), tangent_warmup_steps=200,
                 P_mean=-0.5, P_std=1.4, adaptive_weighting=False, tangent_c=0.0)
    params = method.init_params(jax.random.key(0))
    aux = method.init_aux(params, jax.random.key(1))
    steps = 3000
    optimizer = optax.adam(optax.cosine_decay_schedule(1e-3, steps))

    def step(carry, k):
        params, opt_state = carry
        rng = jax.random.fold_in(jax.random.key(2), k)
        data_rng, loss_rng = jax.random.split(rng)
        batch = {"image": GAUSSIAN.sample(data_rng, 256).reshape((256,) + SHAPE), "label": None}
        grads = jax.grad(lambda p: method.loss(p, batch, loss_rng, aux, k)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))(
        (params, optimizer.init(params)))
    t = jnp.repeat(jnp.array([0.1, 0.5, 1.0, 1.4, trigflow.T_MAX]), 400)
    x_t = trigflow.noisy(GAUSSIAN.sample(jax.random.key(3), t.shape[0]),
                         SD * jax.random.normal(jax.random.key(4), (t.shape[0], 4)), t)
    target = exact_f(x_t, t)
    student = method.consistency_fn(params)(x_t.reshape((-1,) + SHAPE), t).reshape(x_t.shape)
    denoiser = GAUSSIAN.denoiser(trigflow.to_edm(x_t, t), trigflow.sigma_of_t(t))
    err = lambda a: float(jnp.sqrt(jnp.mean((a - target) ** 2)) / jnp.linalg.norm(STD))
    assert err(student) < 0.06, err(student)
    assert err(denoiser) > 0.15, err(denoiser)


# --- configs and builders --------------------------------------------------------------------
def test_bad_names_and_a_missing_teacher_are_config_errors():
    config = digits_sct.get_config()
    config.scm.training_mode = "ct"
    with pytest.raises(ConfigError, match="training mode"):
        builders.build_method(config)
    config = digits_sct.get_config()
    config.scm.c_noise = "log"
    with pytest.raises(ConfigError, match="noise conditioning"):
        builders.build_method(config)
    config = digits_sct.get_config()
    config.scm.init_from_teacher = True
    with pytest.raises(ConfigError, match="needs scm.training_mode=scd"):
        builders.build_method(config)
    method = builders.build_method(digits_scd.get_config())  # no teacher_workdir: info only
    with pytest.raises(ConfigError, match="teacher_workdir"):
        method.init_aux({}, jax.random.key(0))


def test_digits_configs_build_the_edm_digits_network():
    """188,769 parameters of configs/edm/digits.py plus the 129 of u(t)."""
    for module in (digits_sct, digits_scd):
        method = builders.build_method(module.get_config())
        shapes = jax.eval_shape(method.init_params, jax.random.key(0))
        count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
        assert count(shapes["net"]) == 188_769 and count(shapes["logvar"]) == 129


@pytest.mark.slow
def test_a_student_started_from_an_edm_teacher_is_its_trigflow_form():
    """With c_noise 'edm', `start` puts the teacher's weights into the student, whose f is then
    the teacher's one-step denoiser D(x_t / cos t, sigma_d tan t) (random teacher weights); the
    same weights read with c_noise = t are rejected."""
    from diffusion_jax.methods.edm import EDM

    model = NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
    teacher = EDM(model=model, image_shape=(8, 8, 1))
    weights = helpers.random_params(jax.eval_shape(teacher.init_params, jax.random.key(0)))
    x_t = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    t = jnp.array([0.2, 0.9, 1.5])
    D = teacher.conditional_denoiser(weights)(trigflow.to_edm(x_t, t), trigflow.sigma_of_t(t))

    def student_f(c_noise):
        student = SCM(model=model, image_shape=(8, 8, 1), training_mode="scd", teacher=teacher,
                      c_noise=c_noise, init_from_teacher=True)
        params = student.init_params(jax.random.key(2))
        params, aux = student.start(params, student.init_aux(params, jax.random.key(3)),
                                    {"teacher": weights})
        return student.consistency_fn(params)(x_t, t)

    err = lambda f: float(jnp.max(jnp.abs(f - D)) / jnp.max(jnp.abs(D)))
    assert err(student_f("edm")) < 1e-5
    assert err(student_f("t")) > 1e-2


def test_cifar10_sct_builds_edm_ddpmpp_and_samples_in_two_steps():
    """EDM's DDPM++ (55,732,739 parameters) plus u(t)'s 129; two-step sampling by default."""
    from configs.scm import cifar10_sct

    config = cifar10_sct.get_config()
    method = builders.build_method(config)
    shapes = jax.eval_shape(method.init_params, jax.random.key(0))
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
    assert count(shapes["net"]) == 55_732_739 and count(shapes["logvar"]) == 129
    sampler = builders.build_sampler(config, method)
    assert method.times(sampler) == (trigflow.T_MAX, 1.1)


TINY = ["--config.model.nf=8", "--config.model.attn_resolutions=()",
        "--config.training.batch_size=32", "--config.training.log_every=5",
        "--config.sampling.num_samples=8", "--config.sampling.batch_size=8",
        "--config.training.preview_samples=0"]


@pytest.mark.slow
def test_digits_edm_teacher_then_scd_then_one_and_two_step_samples_through_the_launcher(
        tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    result = helpers.launch_one_device("--config=configs/edm/digits.py", f"--workdir={teacher}",
                                       *TINY, "--config.training.num_steps=10",
                                       "--config.training.checkpoint_every=10",
                                       "--config.training.sample_at_end=False")
    assert result.returncode == 0, result.stderr[-3000:]
    scd = ["--config=configs/scm/digits_scd.py", f"--workdir={student}", *TINY,
           f"--config.scm.teacher_workdir={teacher}"]
    result = helpers.launch_one_device(*scd, "--config.training.num_steps=10",
                                       "--config.training.checkpoint_every=10")
    assert result.returncode == 0, result.stderr[-3000:]
    one = np.load(student / "samples" / "step_10.npz")["images"]
    assert one.shape == (8, 8, 8, 1) and np.isfinite(one).all()
    result = helpers.launch_one_device(*scd, "--mode=sample", "--config.sampling.method=multistep",
                                       "--config.sampling.num_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    two = np.load(student / "samples" / "sample_10_1.npz")["images"]
    assert two.shape == (8, 8, 8, 1) and not np.allclose(one, two)
    result = helpers.launch_one_device(*scd, "--mode=sample", "--config.sampling.method=multistep",
                                       "--config.sampling.num_steps=3")
    assert result.returncode == 2 and "needs sampling.sigmas" in result.stderr
