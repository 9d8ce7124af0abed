"""The new solvers, grids and options through the sampler layer: `Sampler` fields reach the
algorithm functions, every grid is a config key checked when the sampler is built, and every
sampler of every family reports the network evaluations it makes, a guided 2B batch as one."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_ddpm_config

from diffusion_jax import analytic, builders, denoisers
from diffusion_jax.errors import ConfigError
from diffusion_jax.processes import schedules
from diffusion_jax.samplers import dpm_solver, edm, grids, linear_multistep, solvers, unipc
from diffusion_jax.samplers.sampler import Sampler
from test_edm_method import tiny_edm_config
from test_sampler_coverage import CASES, _tiny_config

MIXTURE = analytic.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]))
MODEL = solvers.DenoiserModel(MIXTURE.denoiser)  # EDM's range 0.002..80, no schedule
SCHEDULE = schedules.make_schedule("linear", 1000)
DISCRETE = solvers.DenoiserModel(MIXTURE.denoiser, 0.01, 157.4, SCHEDULE)

# sampler fields -> the function, the options they must run it with, and options of the same
# function that give another result (the algorithms are tested against the references in
# test_multistep_samplers.py; here: that the fields arrive)
WIRING = {
    "unipc_defaults": (dict(method="unipc"), unipc.unipc_sample, dict(order=2), dict(order=3)),
    "unipc_options": (dict(method="unipc", order=3, unipc_variant="bh1",
                           solver_prediction="noise", lower_order_final=False,
                           disable_corrector=(2,)),
                      unipc.unipc_sample, dict(order=3, variant="bh1", prediction="noise",
                                               lower_order_final=False, disable_corrector=(2,)),
                      dict(order=3)),
    "3m_defaults": (dict(method="dpm_solver_pp_3m", eta=0.7), dpm_solver.dpm_solver_pp_3m_sample,
                    dict(eta=0.0, lower_order_final=True), dict(eta=0.0)),
    "3m_options": (dict(method="dpm_solver_pp_3m", second_order="midpoint", taylor_d2=True),
                   dpm_solver.dpm_solver_pp_3m_sample,
                   dict(second_order="midpoint", taylor_d2=True, lower_order_final=True),
                   dict(lower_order_final=True)),
    "3m_sde": (dict(method="dpm_solver_pp_3m_sde", eta=0.5, S_noise=0.9),
               dpm_solver.dpm_solver_pp_3m_sample,
               dict(eta=0.5, S_noise=0.9, lower_order_final=True), dict(eta=0.5, S_noise=1.0)),
    "2s_ancestral": (dict(method="dpm_solver_pp_2s_ancestral", eta=0.6, S_noise=0.95),
                     dpm_solver.dpm_solver_pp_2s_ancestral_sample, dict(eta=0.6, S_noise=0.95),
                     dict(eta=0.6)),
    "lms_default_order_4": (dict(method="lms"), linear_multistep.lms_sample, dict(order=4),
                            dict(order=3)),
    "lms_order_2": (dict(method="lms", order=2), linear_multistep.lms_sample, dict(order=2),
                    dict(order=4)),
    "deis": (dict(method="deis", order=3, lower_order_final=False), linear_multistep.deis_sample,
             dict(order=3, lower_order_final=False), dict(order=3)),
    "dpm_solver_pp_single_step": (dict(method="dpm_solver", order=2, solver_prediction="data"),
                                  dpm_solver.dpm_solver_sample, dict(order=2, prediction="data"),
                                  dict(order=2)),
}


@pytest.mark.parametrize("case", sorted(WIRING))
def test_sampler_fields_reach_the_solver(case):
    """`solve` is the function with the options the fields name, on `sigma_grid`'s grid, from
    the same start and noise, bit for bit; negative control: other options of the function
    give another result."""
    fields, fn, options, other = WIRING[case]
    sampler = Sampler(num_steps=8, **fields)
    x_init = jax.random.normal(jax.random.key(0), (64, 2))
    out, _ = solvers.solve(sampler, MODEL, jax.random.key(1), x_init)
    sigmas = solvers.sigma_grid(sampler, MODEL)
    run = lambda **kw: fn(MIXTURE.denoiser, jax.random.key(1), x_init.shape, sigmas=sigmas,
                          x_init=sigmas[0] * x_init, **kw)
    np.testing.assert_array_equal(out, run(**options))
    assert float(jnp.max(jnp.abs(run(**other) - out))) > 1e-4


def _grid(model=MODEL, **fields):
    return np.asarray(solvers.sigma_grid(Sampler(**fields), model))


@pytest.mark.parametrize("method", ["heun", "lms", "dpm_solver_pp_2s_ancestral"])
def test_rho_grid_solvers_keep_the_rho_grid_under_the_continuous_spacings(method):
    """The spacings of the DPM-Solver and DDIM grids leave these on the rho grid of Karras et al.
    (EDM's default 'logsnr', DDPM's 'uniform'), as Heun always was."""
    rho_grid = np.asarray(edm.sigma_steps(10, 0.002, 80.0))
    for spacing in ("logsnr", "uniform", "time_quadratic", "karras"):
        np.testing.assert_array_equal(_grid(method=method, num_steps=10, spacing=spacing),
                                      rho_grid)


@pytest.mark.parametrize("method", ["dpm_solver_pp_2m", "unipc", "dpm_solver_pp_3m", "deis"])
def test_dpm_grid_solvers_follow_the_spacing(method):
    """DPM-Solver's grids by `spacing` (the DDIM names 'uniform' / 'quadratic' are its time
    grids), or the rho grid with 'karras'."""
    np.testing.assert_array_equal(_grid(method=method, num_steps=6),
                                  dpm_solver.dpm_sigmas(6, 0.002, 80.0, "logsnr"))
    np.testing.assert_array_equal(_grid(method=method, num_steps=6, spacing="karras"),
                                  edm.sigma_steps(6, 0.002, 80.0))
    maps = dict(zip(("sigma_of_t", "t_of_sigma"),
                    denoisers.discrete_time_maps(SCHEDULE)))
    np.testing.assert_array_equal(
        _grid(DISCRETE, method=method, num_steps=6, spacing="quadratic"),
        dpm_solver.dpm_sigmas(6, 0.01, 157.4, "time_quadratic", **maps))


@pytest.mark.parametrize("method", ["euler", "unipc", "ddim", "lms"])
def test_leading_trailing_and_listed_grids_apply_to_every_solver(method):
    """diffusers' spacings of a discrete model (`grids.spaced_sigmas`), timesteps and sigmas as
    lists: the same grid whatever the solver."""
    np.testing.assert_array_equal(
        _grid(DISCRETE, method=method, num_steps=10, spacing="leading", steps_offset=1),
        grids.spaced_sigmas(SCHEDULE, 10, "leading", 1))
    np.testing.assert_array_equal(_grid(DISCRETE, method=method, num_steps=4, spacing="trailing"),
                                  grids.spaced_sigmas(SCHEDULE, 4, "trailing"))
    np.testing.assert_array_equal(_grid(DISCRETE, method=method, timesteps=(999, 500, 20)),
                                  grids.timestep_sigmas(SCHEDULE, [999, 500, 20]))
    ays = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029, 0.0)
    np.testing.assert_allclose(_grid(method=method, sigmas=ays, num_steps=3), ays, rtol=1e-6)


def test_dpm_grid_of_a_ddpm_is_its_time_grid_and_heun_its_rho_grid():
    """What a DDPM config ran before the new spacings (its default spacing 'uniform')."""
    method = builders.build_method(tiny_ddpm_config())
    model = method.denoiser_model(None, None, None, method.default_sampler)
    maps = dict(zip(("sigma_of_t", "t_of_sigma"),
                    denoisers.discrete_time_maps(method.schedule)))
    np.testing.assert_array_equal(
        _grid(model, method="dpm_solver", num_steps=5, spacing="uniform"),
        dpm_solver.dpm_sigmas(5, model.sigma_min, model.sigma_max, "time_uniform", **maps))
    np.testing.assert_array_equal(_grid(model, method="heun", num_steps=5, spacing="uniform"),
                                  edm.sigma_steps(5, model.sigma_min, model.sigma_max))


@pytest.mark.parametrize("family,sampling,match", [
    ("edm", dict(method="unipc", spacing="trailing"), "discrete-time model"),
    ("edm", dict(method="heun", timesteps=(900, 100)), "discrete-time model"),
    ("edm", dict(method="lms", sigmas=(80.0, 10.0, 10.0, 0.0)), "strictly decreasing"),
    ("edm", dict(method="deis", sigmas=(200.0, 1.0, 0.0)), "range"),
    ("edm", dict(method="unipc", order=4), "order"),
    ("edm", dict(method="unipc", unipc_variant="bh3"), "bh1, bh2"),
    ("edm", dict(method="dpm_solver_pp_3m", second_order="rk4"), "heun, midpoint"),
    ("edm", dict(method="unipc", solver_prediction="v"), "data, noise"),
    ("edm", dict(method="heun", spacing="linspace"), "karras"),
    ("ddpm", dict(method="euler", spacing="trailing", steps_offset=1), "leading"),
    ("ddpm", dict(method="euler", sigmas=(100.0, 1.0), timesteps=(90, 10)), "set one"),
    ("ddpm", dict(method="unipc", timesteps=(100, 50)), r"\[0, 99\]"),
    ("ddpm", dict(method="ddim", spacing="trailing"), "ddim chain"),
    ("ddpm", dict(method="euler", num_steps=101, spacing="leading"), r"\[1, 100\]"),
])
def test_grid_and_option_errors_come_when_the_config_is_built(family, sampling, match):
    """One-line ConfigErrors from `builders.build_method`, before any training or sampling."""
    config = tiny_ddpm_config() if family == "ddpm" else tiny_edm_config()
    config.sampling.update(sampling)
    with pytest.raises(ConfigError, match=match) as error:
        builders.build_method(config)
    assert "\n" not in str(error.value)


def test_lms_takes_order_4_and_listed_grids_from_a_config():
    config = tiny_edm_config()
    config.sampling.update(method="lms", order=4, sigmas=(80.0, 5.0, 0.5, 0.0))
    method = builders.build_method(config)
    sampler = builders.build_sampler(config, method)
    assert (sampler.order, sampler.sigmas) == (4, (80.0, 5.0, 0.5, 0.0))


# --- network evaluations ----------------------------------------------------------------------
CALLS = []


class CountingNetwork(nn.Module):
    """A network of one parameter that records each call (a batched guided pair is one call)."""

    @nn.compact
    def __call__(self, x, t, cond=None, train=False, h=None):
        jax.debug.callback(lambda: CALLS.append(1))
        w = self.param("w", nn.initializers.constant(0.5), ())
        out = w * x + 0.01 * jnp.reshape(t, (-1,) + (1,) * (x.ndim - 1))
        if h is not None:  # MeanFlow's second time input
            out = out + 0.01 * jnp.reshape(h, (-1,) + (1,) * (x.ndim - 1))
        if cond is not None:
            out = out + 0.01 * jnp.reshape(cond, (-1,) + (1,) * (x.ndim - 1))
        return out


GUIDED = ("ddpm", "edm", "score_sde", "latent")
CHAIN_OPTIONS = {"pc": dict(corrector="langevin", n_corrector_steps=2), "ode": dict(rtol=1e-3,
                                                                                    atol=1e-3)}
FAMILY_OPTIONS = {("scm", "multistep"): dict(sigmas=(80.0, 10.0, 2.0, 0.5, 0.1))}  # 5 levels


def _counting_method(family, tmp_path):
    config = _tiny_config(family, str(tmp_path))
    if family in GUIDED:
        config.model.class_conditional = True
    method = builders.build_method(config)
    if family == "latent":
        return dataclasses.replace(method, inner=dataclasses.replace(method.inner,
                                                                     model=CountingNetwork()))
    return dataclasses.replace(method, model=CountingNetwork())


# every row of the sampler table but the autoencoder prior (no network evaluations); the
# default suite runs each shared solver on EDM and every chain, the slow one every family
NFE_CASES = [pytest.param(name, family, id=f"{family}-{name}",
                          marks=[pytest.mark.slow] if family != "edm" and name in solvers.SOLVERS
                          else [])
             for name, family in CASES if family != "autoencoder"]


@pytest.mark.parametrize("name,family", NFE_CASES)
def test_every_sampler_reports_the_network_calls_it_makes(name, family, tmp_path):
    """stats['nfe'] of `method.sample` is the number of network calls, counted at run time,
    with classifier-free guidance (scale 2: conditional and unconditional in one 2B call) where
    the family has it, over 5 steps."""
    method = _counting_method(family, tmp_path)
    guide = dict(guidance_scale=2.0) if family in GUIDED else {}
    sampler = method.sampler(method=name, num_steps=5, **CHAIN_OPTIONS.get(name, {}),
                             **FAMILY_OPTIONS.get((family, name), {}), **guide)
    params = method.init_params(jax.random.key(0))
    aux = method.init_aux(params, jax.random.key(1))
    x_init = jax.random.normal(jax.random.key(2), (2,) + tuple(method.noise_shape))
    cond = jnp.zeros(2, jnp.int32) if method.num_classes else None
    CALLS.clear()
    _, stats = jax.jit(functools.partial(method.sample, sampler=sampler))(
        params, jax.random.key(3), x_init, cond, aux=aux)
    jax.effects_barrier()
    assert int(stats["nfe"]) == len(CALLS) > 0


@pytest.mark.parametrize("method,nfe", [("heun", 9), ("dpm_solver", 13), ("euler", 5),
                                        ("dpm_solver_pp_2s_ancestral", 9), ("unipc", 5)])
def test_nfe_on_a_listed_grid_ending_at_zero(method, nfe):
    """Five levels then 0: Heun and DPM-Solver-3 step onto 0 with one evaluation, 2S ancestral
    too (sigma_down = 0)."""
    sigmas = jnp.array([80.0, 20.0, 5.0, 1.0, 0.1, 0.0])
    assert int(solvers.nfe(Sampler(method=method, order=3 if method == "dpm_solver" else 0),
                           sigmas)) == nfe
