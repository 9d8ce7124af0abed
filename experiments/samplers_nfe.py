"""Sample quality versus network evaluations (NFE) for every shared solver (`solvers.SOLVERS`)
on one trained digits EDM model (`configs/edm/digits.py`, trained here through the launcher
unless `workdir/digits` already has its checkpoint).

Each solver runs on its default grid of the config's range (sigma 0.002..80: the rho grid for
Heun, Euler, Euler-ancestral, DPM-Solver++(2S) ancestral and LMS, DPM-Solver's log-SNR grid for
the DPM-Solvers, UniPC and DEIS, DDIM's timesteps for 'ddim') with the most steps whose count
`solvers.nfe` keeps within each NFE budget; the NFE plotted is the `nfe` the sampler reports.
Quality: (a) the digits Frechet distance (`evaluation/digits_features.py`, not FID) of the
samples to the training images; (b) for the deterministic solvers, the RMS pixel distance to
the probability-flow ODE solution from the same noise (Heun with `REFERENCE_STEPS` steps), the
solver's own error, free of the sample-size floor of (a). Writes `samplers_nfe.csv`,
`samplers_nfe.png` (both panels, one line per solver) and prints one Markdown table:

    python3 launch.py --experiment=experiments/samplers_nfe.py --workdir=runs/samplers_nfe

`:quick`: two budgets, 16 samples, a 2-step tiny model, a 32-step reference.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from configs.edm import digits as digits_config
from diffusion_jax import launcher, parallel, sampling
from diffusion_jax.errors import ConfigError
from diffusion_jax.evaluation.frechet import feature_statistics, frechet_distance
from diffusion_jax.samplers import solvers
from experiments._study import write_results

STOCHASTIC = ("euler_ancestral", "dpm_solver_pp_2m_sde", "dpm_solver_pp_3m_sde",
              "dpm_solver_pp_2s_ancestral")
REFERENCE_STEPS = 256
NFE_BUDGETS = (5, 10, 20, 40)


def steps_within(method, sampler, budget: int) -> int:
    """The most steps of `sampler` whose network evaluations on its grid are at most `budget`
    (at least one step)."""
    model = method.denoiser_model(None, None, None, sampler)
    best = 1
    for n in range(1, budget + 1):
        probe = sampler.replace(num_steps=n)
        if int(solvers.nfe(probe, solvers.sigma_grid(probe, model))) <= budget:
            best = n
    return best


def _train(workdir: str, quick: bool):
    config = digits_config.get_config()
    if quick:
        config.model.update(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
        config.training.update(num_steps=2, checkpoint_every=2, batch_size=16)
    config.training.sample_at_end = False
    directory = os.path.join(workdir, "digits")
    if launcher.run(config, directory, "train") != 0:
        raise RuntimeError("training the digits EDM model failed")
    return config, directory


def rows_of(workdir: str, budgets, num: int, quick: bool) -> list[dict]:
    from diffusion_jax import builders, runs
    from diffusion_jax.evaluation.digits_features import digits_feature_fn

    config, directory = _train(workdir, quick)
    mesh = parallel.make_mesh()
    method, state = runs.restore(config, directory, mesh)
    base = builders.build_sampler(config, method)
    features = digits_feature_fn()
    reference_features = feature_statistics(features(runs.training_images(config, 1797))[0])
    batch = -(-min(num, 500) // mesh.devices.size) * mesh.devices.size

    def generate(sampler):
        nfes = []
        images = sampling.generate(method, state.ema_params, jax.random.PRNGKey(1), num, batch,
                                   mesh, sampler,  # the same key: the same starting noise
                                   on_batch=lambda b, i, l, s: nfes.append(s["nfe"]))
        return images, int(nfes[0])

    ode, _ = generate(base.replace(method="heun", num_steps=32 if quick else REFERENCE_STEPS))
    rows = []
    for name in solvers.SOLVERS:
        for budget in budgets:
            sampler = base.replace(method=name)
            sampler = sampler.replace(num_steps=steps_within(method, sampler, budget))
            images, nfe = generate(sampler)
            error = (float("nan") if name in STOCHASTIC else
                     float(np.sqrt(np.mean((images - ode) ** 2))))
            rows.append(dict(sampler=name, steps=sampler.num_steps, nfe=nfe,
                             frechet=frechet_distance(*feature_statistics(features(images)[0]),
                                                      *reference_features),
                             ode_error=error))
            print(f"  {name}: {sampler.num_steps} steps, nfe {nfe}, Frechet "
                  f"{rows[-1]['frechet']:.4f}, ODE error {error:.4f}", flush=True)
    return rows


def _table(rows) -> str:
    lines = ["| sampler | steps | NFE | Frechet distance | RMS to the ODE solution |",
             "|---|---|---|---|---|"]
    for r in rows:
        ode = "" if np.isnan(r["ode_error"]) else f"{r['ode_error']:.4f}"
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['frechet']:.4f} | "
                     f"{ode} |")
    return "\n".join(lines)


def _plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for i, name in enumerate(dict.fromkeys(r["sampler"] for r in rows)):
        style = dict(marker="o", linestyle="--" if name in STOCHASTIC else "-",
                     color=plt.cm.tab20(i % 20), label=name)
        mine = [r for r in rows if r["sampler"] == name]
        axes[0].plot([r["nfe"] for r in mine], [r["frechet"] for r in mine], **style)
        if name not in STOCHASTIC:
            axes[1].plot([r["nfe"] for r in mine], [r["ode_error"] for r in mine], **style)
    axes[0].set(xscale="log", yscale="log", xlabel="network evaluations (reported nfe)",
                ylabel="digits Frechet distance to the training images",
                title="(a) sample quality (dashed: stochastic)")
    axes[1].set(xscale="log", yscale="log", xlabel="network evaluations (reported nfe)",
                ylabel="RMS distance to the ODE solution (pixels in [-1, 1])",
                title="(b) deterministic solvers: ODE error")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("EDM on 8x8 digits: every shared solver against NFE")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(workdir: str, arg=None) -> int:
    if arg not in (None, "", "quick"):
        raise ConfigError(f"unknown argument {arg!r} for experiments/samplers_nfe.py; valid: quick")
    quick = arg == "quick"
    os.makedirs(workdir, exist_ok=True)
    rows = rows_of(workdir, NFE_BUDGETS[:2] if quick else NFE_BUDGETS, 16 if quick else 1000,
                   quick)
    write_results(workdir, "samplers_nfe", rows, _table(rows), _plot)
    return 0
