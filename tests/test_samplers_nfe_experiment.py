"""experiments/samplers_nfe.py in its quick mode: every shared solver on one digits EDM model,
each within its NFE budget as the sampler itself reports it."""
import csv

import numpy as np
import pytest

from diffusion_jax.samplers import solvers


@pytest.mark.slow
def test_samplers_nfe_experiment_quick(tmp_path, capsys):
    from experiments import samplers_nfe

    assert samplers_nfe.run(str(tmp_path), "quick") == 0
    table = capsys.readouterr().out
    assert "| heun | 5 | 9 |" in table and "| dpm_solver | 3 | 9 |" in table
    rows = list(csv.DictReader(open(tmp_path / "samplers_nfe.csv")))
    assert sorted({r["sampler"] for r in rows}) == sorted(solvers.SOLVERS)
    # (budget 5, budget 10) -> reported nfe: Heun 2 per step and 1 onto sigma = 0, DPM-Solver-3
    # 3 per step (its grid ends at sigma_min), 2S ancestral 2 per step and 1 onto 0, the rest 1
    expected = {"heun": (5, 9), "dpm_solver": (3, 9), "dpm_solver_pp_2s_ancestral": (5, 9)}
    for name in solvers.SOLVERS:
        nfes = tuple(int(r["nfe"]) for r in rows if r["sampler"] == name)
        assert nfes == expected.get(name, (5, 10)), name
    for r in rows:
        assert np.isfinite(float(r["frechet"]))
        assert np.isnan(float(r["ode_error"])) == (r["sampler"] in samplers_nfe.STOCHASTIC)
    assert (tmp_path / "samplers_nfe.png").is_file()


@pytest.mark.parametrize("name,budget,steps", [("heun", 10, 5), ("heun", 5, 3), ("euler", 7, 7),
                                               ("dpm_solver", 10, 3),
                                               ("dpm_solver_pp_2s_ancestral", 6, 3)])
def test_steps_within_a_budget_are_the_most_the_reported_nfe_allows(name, budget, steps):
    """Heun 2N - 1, DPM-Solver-3 3N, 2S ancestral 2N - 1 evaluations on the EDM grids; one step
    more would exceed the budget."""
    from test_edm_method import tiny_edm_config

    from diffusion_jax import builders
    from experiments import samplers_nfe

    method = builders.build_method(tiny_edm_config())
    sampler = method.sampler(method=name)
    assert samplers_nfe.steps_within(method, sampler, budget) == steps
    model = method.denoiser_model(None, None, None, sampler)
    over = sampler.replace(num_steps=steps + 1)
    assert int(solvers.nfe(over, solvers.sigma_grid(over, model))) > budget


def test_an_unknown_argument_is_a_config_error(tmp_path):
    from diffusion_jax.errors import ConfigError
    from experiments import samplers_nfe

    with pytest.raises(ConfigError, match="valid: quick"):
        samplers_nfe.run(str(tmp_path), "huge")
