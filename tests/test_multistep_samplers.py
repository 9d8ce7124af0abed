"""UniPC, DPM-Solver++(3M) and (3M) SDE, DPM-Solver++(2S) ancestral, LMS and DEIS: against
diffusers and k-diffusion (tests/data/samplers_*.npz, written by tools/make_sampler_fixtures.py)
and against the exact probability-flow ODE of Gaussian data."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, denoisers
from diffusion_jax.errors import ConfigError
from diffusion_jax.processes import schedules
from diffusion_jax.samplers import dpm_solver, edm, grids, linear_multistep, unipc

DATA = os.path.join(os.path.dirname(__file__), "data")
MEAN = jnp.array([0.3, -0.5])
COV = jnp.array([[1.0, 0.6], [0.6, 0.5]])
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
MIXTURE = analytic.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]))

uni = functools.partial(functools.partial, unipc.unipc_sample)
dpm3m = functools.partial(functools.partial, dpm_solver.dpm_solver_pp_3m_sample)
dpm2s = functools.partial(functools.partial, dpm_solver.dpm_solver_pp_2s_ancestral_sample)
lms = functools.partial(functools.partial, linear_multistep.lms_sample)
deis = functools.partial(functools.partial, linear_multistep.deis_sample)

# fixture case -> our sampler with the options that are the reference's configuration
# (diffusers' UniPC: solver_order, solver_type, predict_x0, lower_order_final, disable_corrector;
# its DPMSolverMultistep(solver_order=3): solver_type -> second_order; k-diffusion: eta)
REFERENCE_CASES = {
    "unipc": {
        **{f"order{p}_{v}_{m}": uni(order=p, variant=v, prediction=m)
           for p in (1, 2, 3) for v in ("bh1", "bh2") for m in ("data", "noise")},
        "order2_bh2_data_zero": uni(order=2),
        "order3_bh2_data_zero": uni(order=3),
        "order3_no_lower_order_final": uni(order=3, lower_order_final=False),
        "order3_disable_corrector": uni(order=3, disable_corrector=(0, 3)),
    },
    "dpmpp": {
        "diffusers_3m_midpoint": dpm3m(second_order="midpoint", lower_order_final=True),
        "diffusers_3m_heun": dpm3m(second_order="heun", lower_order_final=True),
        "diffusers_3m_no_lower_order_final": dpm3m(second_order="midpoint"),
        "diffusers_3m_sigma_min": dpm3m(second_order="midpoint", lower_order_final=True),
        "diffusers_3m_16_steps": dpm3m(second_order="midpoint", lower_order_final=True),
        "diffusers_3m_sde": dpm3m(eta=1.0),
        "k_3m": dpm3m(),
        "k_3m_sde": dpm3m(eta=1.0),
        "k_3m_sde_eta_half": dpm3m(eta=0.5),
        "k_2s_ancestral": dpm2s(),
        "k_2s_ancestral_eta_half": dpm2s(eta=0.5),
        "k_2s": dpm2s(eta=0.0),
    },
    "lms": {"k_lms_order3": lms(order=3), "k_lms_order4": lms(), "diffusers_lms": lms()},
    "deis": {"order1": deis(order=1), "order2": deis(), "order3": deis(order=3),
             "order3_16_steps": deis(order=3)},
}


def _fixture(family):
    return np.load(os.path.join(DATA, f"samplers_{family}.npz"))


def _mixture(data):
    return analytic.GaussianMixture(*(jnp.asarray(data[f"mixture.{k}"])
                                      for k in ("weights", "means", "covs")))


@pytest.mark.parametrize("family", sorted(REFERENCE_CASES))
def test_fixtures_hold_exactly_the_listed_cases(family):
    names = {k.rsplit(".", 1)[0] for k in _fixture(family).files} - {"mixture"}
    names.discard("zero_snr_trailing_v")  # its own test below
    assert names == set(REFERENCE_CASES[family])


@pytest.mark.parametrize("family,case", [(f, c) for f in sorted(REFERENCE_CASES)
                                         for c in sorted(REFERENCE_CASES[f])])
def test_sampler_matches_reference(family, case):
    """Same grid, starting point and injected noise as the reference run, float64: within 1e-6
    (measured: at most 3e-14)."""
    data = _fixture(family)
    with jax.enable_x64(True):
        extra = ({"noise": jnp.asarray(data[f"{case}.noise"])} if f"{case}.noise" in data.files
                 else {})
        x_init = jnp.asarray(data[f"{case}.x_init"])
        out = REFERENCE_CASES[family][case](
            _mixture(data).denoiser, jax.random.key(0), x_init.shape,
            sigmas=jnp.asarray(data[f"{case}.sigmas"]), x_init=x_init, **extra)
        assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, data[f"{case}.out"], rtol=0, atol=1e-6)


def test_unipc_with_zero_terminal_snr_v_prediction_matches_diffusers():
    """Lin et al. 2024 end to end against diffusers' UniPC (rescale_betas_zero_snr, 'trailing',
    v-prediction): our grid on the clipped schedule starts at sigma = 4096 like diffusers', and
    a v-network through `denoisers.from_prediction` samples the same points."""
    data = _fixture("unipc")
    reference = json.loads(str(data["zero_snr_trailing_v.reference"]))
    assert reference["rescale_betas_zero_snr"] and reference["prediction_type"] == "v_prediction"
    schedule = schedules.clip_terminal_alpha_bar(
        schedules.make_schedule("scaled_linear", 1000, zero_terminal_snr=True))
    sigmas = grids.spaced_sigmas(schedule, reference["num_steps"], "trailing")
    np.testing.assert_allclose(sigmas, data["zero_snr_trailing_v.sigmas"], rtol=2e-5)
    assert abs(float(sigmas[0]) - 4096.0) < 1e-3
    mixture = _mixture(data)

    def v_network(x_t, sigma):  # the exact v = alpha eps - sigma_t x0 at EDM level sigma
        alpha = denoisers.vp_alpha(sigma)[:, None]
        x = x_t / alpha
        x0 = mixture.denoiser(x, sigma)
        return alpha * (x - x0) / sigma[:, None] - alpha * sigma[:, None] * x0

    with jax.enable_x64(True):
        x_init = jnp.asarray(data["zero_snr_trailing_v.x_init"])
        out = unipc.unipc_sample(denoisers.from_prediction(v_network, "v"), jax.random.key(0),
                                 x_init.shape, x_init=x_init,
                                 sigmas=jnp.asarray(data["zero_snr_trailing_v.sigmas"]))
    np.testing.assert_allclose(out, data["zero_snr_trailing_v.out"], rtol=0, atol=1e-6)


def _linear_gaussian_denoiser(mean, cov):
    """D = mu + C (C + sigma^2 I)^{-1} (x - mu) in the eigenbasis of C: the exact denoiser of
    N(mu, C) (the same as analytic.gaussian(mean, cov).denoiser, cheaper to compile)."""
    lam, u = jnp.linalg.eigh(cov)

    def denoiser(x, sigma):
        sigma = jnp.broadcast_to(sigma, x.shape[:1])
        return mean + (((x - mean) @ u) * (lam / (lam + sigma[:, None] ** 2))) @ u.T
    return denoiser


def _observed_order(sampler, steps):
    """log2 of the error ratio at N and 2N steps on the rho grid (Karras et al. 2022, Eq. 5) that
    ends at sigma_min, against the exact flow of N(MEAN, COV) from the same 32 points at 80."""
    with jax.enable_x64(True):
        mean, cov = MEAN.astype(jnp.float64), COV.astype(jnp.float64)
        D = _linear_gaussian_denoiser(mean, cov)
        x_T = SIGMA_MAX * jax.random.normal(jax.random.key(0), (32, 2), dtype=jnp.float64)
        exact = analytic.gaussian_ode_flow(x_T, mean, cov, SIGMA_MAX, SIGMA_MIN)
        run = jax.jit(lambda x, sigmas: sampler(D, jax.random.key(1), x.shape, x_init=x,
                                                sigmas=sigmas))
        errors = [float(jnp.max(jnp.abs(run(x_T, edm.sigma_steps(n + 1, SIGMA_MIN, SIGMA_MAX)[:-1])
                                        - exact))) for n in steps]
    return float(np.log2(errors[0] / errors[1]))


# (sampler, the order theory gives, step counts, the same sampler one order lower)
CONVERGENCE = {
    # UniPC-p with its corrector is of order p + 1 (Zhao et al. 2023)
    "unipc_1_bh1": (uni(order=1, variant="bh1", lower_order_final=False), 2, (64, 128),
                    functools.partial(edm.edm_sample, solver="euler")),
    "unipc_2_bh2": (uni(order=2, lower_order_final=False), 3, (64, 128),
                    uni(order=1, lower_order_final=False)),
    "unipc_2_noise": (uni(order=2, prediction="noise", lower_order_final=False), 3, (64, 128),
                      uni(order=1, prediction="noise", lower_order_final=False)),
    "unipc_3_bh1": (uni(order=3, variant="bh1", lower_order_final=False), 4, (32, 64),
                    uni(order=2, variant="bh1", lower_order_final=False)),
    "unipc_3_bh2": (uni(order=3, lower_order_final=False), 4, (32, 64),
                    uni(order=2, lower_order_final=False)),
    # the references' 3M is second order (its D2 term is half the Taylor coefficient) ...
    "dpmpp_3m_as_references": (dpm3m(), 2, (128, 256), functools.partial(
        edm.edm_sample, solver="euler")),
    # ... and third order with the full coefficient
    "dpmpp_3m_taylor_d2": (dpm3m(taylor_d2=True), 3, (64, 128), dpm3m()),
    "dpmpp_2s": (dpm2s(eta=0.0), 2, (64, 128), functools.partial(edm.edm_sample, solver="euler")),
    "lms_4": (lms(order=4), 4, (128, 256), lms(order=3)),
    "lms_2": (lms(order=2), 2, (128, 256), lms(order=1)),
    "deis_2": (deis(order=2, lower_order_final=False), 2, (64, 128),
               deis(order=1, lower_order_final=False)),
    "deis_3": (deis(order=3, lower_order_final=False), 3, (128, 256),
               deis(order=2, lower_order_final=False)),
}


@pytest.mark.parametrize("name", sorted(CONVERGENCE))
def test_converges_at_its_order_on_the_exact_gaussian_flow(name):
    sampler, order, steps, lower = CONVERGENCE[name]
    close = lambda observed: abs(observed - order) < 0.35
    observed = _observed_order(sampler, steps)
    assert close(observed), observed
    assert not close(_observed_order(lower, steps))  # negative control: one order lower


def test_float32_runs_follow_the_float64_ones():
    """The deterministic samplers in float32 (the quadrature weights, UniPC's solves) on a 10-step
    rho grid of the mixture: within 1e-4 of float64 (measured at most 4e-5)."""
    x_init = SIGMA_MAX * jax.random.normal(jax.random.key(3), (64, 2))
    for sampler in (uni(order=3), uni(order=3, variant="bh1", prediction="noise"), dpm3m(),
                    dpm2s(eta=0.0), lms(), deis(order=3)):
        run = lambda x, sigmas: sampler(MIXTURE.denoiser, jax.random.key(0), x.shape, x_init=x,
                                        sigmas=sigmas)
        x32 = run(x_init, edm.sigma_steps(10))
        with jax.enable_x64(True):
            x64 = run(x_init.astype(jnp.float64), edm.sigma_steps(10).astype(jnp.float64))
        np.testing.assert_allclose(x32, x64, rtol=0, atol=1e-4)


def _evaluations(sampler, sigmas):
    calls = []
    D = _linear_gaussian_denoiser(MEAN, COV)

    def counting(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return D(x, sigma)

    sampler(counting, jax.random.key(0), (4, 2), sigmas=sigmas).block_until_ready()
    return len(calls)


@pytest.mark.parametrize("sampler,nfe,final", [
    (uni(order=3), unipc.unipc_nfe, "zero"),
    (dpm3m(eta=1.0), dpm_solver.dpm_solver_pp_3m_nfe, "zero"),
    (dpm2s(), dpm_solver.dpm_solver_pp_2s_ancestral_nfe, "zero"),
    (dpm2s(), dpm_solver.dpm_solver_pp_2s_ancestral_nfe, "sigma_min"),
    (dpm2s(eta=0.0), functools.partial(dpm_solver.dpm_solver_pp_2s_ancestral_nfe, eta=0.0),
     "zero"),
    (lms(), linear_multistep.lms_nfe, "zero"),
    (deis(order=3), linear_multistep.deis_nfe, "zero"),
], ids=["unipc", "3m_sde", "2s_ancestral", "2s_ancestral_to_sigma_min", "2s", "lms", "deis"])
def test_nfe_counts_the_denoiser_calls(sampler, nfe, final):
    sigmas = edm.sigma_steps(9, SIGMA_MIN, SIGMA_MAX)
    sigmas = sigmas if final == "zero" else sigmas[:-1]
    assert _evaluations(sampler, sigmas) == nfe(sigmas)


def test_2s_ancestral_nfe_values():
    """Karras grid of 8 levels + 0: 2 per step, 1 onto sigma = 0 (sigma_down = 0)."""
    sigmas = edm.sigma_steps(8)
    assert dpm_solver.dpm_solver_pp_2s_ancestral_nfe(sigmas) == 15
    assert dpm_solver.dpm_solver_pp_2s_ancestral_nfe(sigmas[:-1]) == 14
    assert unipc.unipc_nfe(sigmas) == linear_multistep.lms_nfe(sigmas) == 8


@pytest.mark.parametrize("sampler", [
    uni(order=3, lower_order_final=False), uni(order=2, prediction="noise", lower_order_final=False),
    dpm3m(), deis(order=3, lower_order_final=False)],
    ids=["unipc", "unipc_noise", "dpmpp_3m", "deis"])
def test_step_onto_zero_is_the_denoiser_at_the_last_evaluated_point(sampler):
    """A grid ending at 0 runs as the same grid to sigma_min, then x = D there, at the point the
    sampler last evaluated (for UniPC the predicted point before its correction: the last
    correction is skipped and no evaluation is added)."""
    with jax.enable_x64(True):
        D = _linear_gaussian_denoiser(MEAN.astype(jnp.float64), COV.astype(jnp.float64))
        x = SIGMA_MAX * jax.random.normal(jax.random.key(4), (16, 2), dtype=jnp.float64)
        sigmas = edm.sigma_steps(7, SIGMA_MIN, SIGMA_MAX)
        at_min = sampler(D, jax.random.key(5), x.shape, x_init=x, sigmas=sigmas[:-1])
        to_zero = sampler(D, jax.random.key(5), x.shape, x_init=x, sigmas=sigmas)
        np.testing.assert_allclose(to_zero, D(at_min, sigmas[-2]), rtol=0, atol=1e-12)


def test_lms_steps_onto_zero_by_its_multistep_rule_like_the_references():
    """LMS extrapolates eps to sigma = 0 instead of x = D (k-diffusion and diffusers do the same):
    order 1 is x = D, order 4 is not (grid to sigma_min = 0.5, then 0)."""
    with jax.enable_x64(True):
        D = _linear_gaussian_denoiser(MEAN.astype(jnp.float64), COV.astype(jnp.float64))
        x = SIGMA_MAX * jax.random.normal(jax.random.key(4), (16, 2), dtype=jnp.float64)
        sigmas = edm.sigma_steps(7, 0.5, SIGMA_MAX)
        run = lambda order, s: linear_multistep.lms_sample(D, jax.random.key(5), x.shape,
                                                           x_init=x, sigmas=s, order=order)
        np.testing.assert_allclose(run(1, sigmas), D(run(1, sigmas[:-1]), sigmas[-2]),
                                   rtol=0, atol=1e-12)
        assert float(jnp.max(jnp.abs(run(4, sigmas) - D(run(4, sigmas[:-1]), sigmas[-2])))) > 1e-3


def test_adams_weights_are_the_closed_form_integrals():
    """DEIS's weights in log sigma against the antiderivatives diffusers' DEIS uses (in extended
    precision: their difference cancels 1/h^3 of its digits), for steps h from 0.01 to 8; LMS's
    in sigma integrate every cubic exactly."""
    with jax.enable_x64(True):
        for h in (0.01, 1.0, 8.0):
            s0, s1, s2 = 3.0, 3.0 * np.exp(0.7 * h), 3.0 * np.exp(1.5 * h)
            t = s0 * np.exp(-h)
            b, c, d = (np.log(np.longdouble(s)) for s in (s0, s1, s2))

            def antiderivative(x, b, c, d):  # of (ln x - c)(ln x - d) / ((b - c)(b - d)) dx
                u = np.log(np.longdouble(x))
                return x * ((u - c) * (u - d) - (2 * u - c - d) + 2) / ((b - c) * (b - d))

            expected = [antiderivative(t, b, c, d) - antiderivative(s0, b, c, d),
                        antiderivative(t, c, d, b) - antiderivative(s0, c, d, b),
                        antiderivative(t, d, b, c) - antiderivative(s0, d, b, c)]
            weights = linear_multistep.adams_weights(jnp.log(jnp.array([s0, s1, s2])),
                                                     jnp.log(s0), jnp.log(t), jnp.exp)
            np.testing.assert_allclose(weights, np.array(expected, np.float64), rtol=1e-12)
        nodes = jnp.array([1.0, 1.7, 2.9, 4.4])
        weights = linear_multistep.adams_weights(nodes, 1.0, 0.3, jnp.ones_like)
        cubic = lambda s: 2.0 - s + 0.5 * s**2 - 0.25 * s**3
        primitive = lambda s: 2.0 * s - s**2 / 2 + s**3 / 6 - s**4 / 16
        np.testing.assert_allclose(jnp.sum(weights * cubic(nodes)), primitive(0.3) - primitive(1.0),
                                   rtol=1e-13)


@pytest.mark.parametrize("sampler", [dpm3m(eta=1.0), dpm2s()], ids=["3m_sde", "2s_ancestral"])
def test_stochastic_sampler_reproduces_mixture_moments(sampler):
    """3000 samples over 32 steps to sigma = 0 with the sampler's own noise. Standard errors:
    mean ~ 0.022, covariance ~ 0.039; the negative control with S_noise = 0.5 (too little noise:
    the samples shrink towards the modes) fails the same check."""
    n, sigmas = 3000, edm.sigma_steps(32)

    def moments_close(**options):
        x = jax.jit(functools.partial(sampler, MIXTURE.denoiser, shape=(n, 2), sigmas=sigmas,
                                      **options))(jax.random.key(2))
        return (bool(jnp.all(jnp.abs(x.mean(0) - MIXTURE.mean) < 0.07))
                and bool(jnp.all(jnp.abs(jnp.cov(x.T) - MIXTURE.covariance) < 0.12)))

    assert moments_close()
    assert not moments_close(S_noise=0.5)


def test_invalid_options_raise_config_errors():
    run = lambda fn, **kw: fn(MIXTURE.denoiser, jax.random.key(0), (2, 2),
                              sigmas=edm.sigma_steps(4), **kw)
    with pytest.raises(ConfigError, match="bh2"):
        run(unipc.unipc_sample, variant="bh3")
    with pytest.raises(ConfigError, match="order"):
        run(unipc.unipc_sample, order=4)
    with pytest.raises(ConfigError, match="midpoint"):
        run(dpm_solver.dpm_solver_pp_3m_sample, second_order="rk")
    with pytest.raises(ConfigError, match="order"):
        run(linear_multistep.deis_sample, order=4)
