"""Sample quality versus network evaluations (NFE) for DDPM ancestral, DDIM, EDM Heun and
DPM-Solver++(2M), all on one DDPM epsilon-network (linear beta, T = 1000).

(a) Analytic: the exact epsilon-network of a 2-D Gaussian mixture (`analytic.DiscreteEpsNetwork`).
    Quality is the Frechet distance of the samples to exact mixture samples, and for the
    deterministic samplers the RMS error to the probability-flow ODE solution of the same noise
    (a 1000-step Heun reference on the schedule's sigma range).
(b) Digits: a DDPM trained on the embedded digits (`configs/ddpm/digits.py`, trained here through
    the launcher unless `workdir/digits` already has its checkpoint); quality is the digits
    Frechet distance (`evaluation/digits_features.py`, not FID) to the training images.

NFE per sampler: ancestral and DDIM take NFE steps, Heun (2N - 1 evaluations) N = (NFE + 1) / 2
steps, DPM-Solver++(2M) NFE steps. Writes `sampler_nfe.csv`, `sampler_nfe.png` and prints one
Markdown table. A scripted study (not a config sweep):

    python3 launch.py --experiment=experiments/sampler_nfe.py --workdir=runs/sampler_nfe

`:quick`: two NFEs, few samples, a 2-step tiny digits model.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from configs.ddpm import digits as digits_config
from diffusion_jax import analytic, launcher, parallel, sampling
from diffusion_jax.errors import ConfigError
from diffusion_jax.evaluation.frechet import feature_statistics, frechet_distance
from diffusion_jax.methods.ddpm import DDPM
from diffusion_jax.processes import schedules
from experiments._study import write_results

SAMPLERS = {  # name -> (sampling.method, steps for an NFE budget)
    "DDPM ancestral": ("ancestral", lambda nfe: nfe),
    "DDIM": ("ddim", lambda nfe: nfe),
    "EDM Heun": ("heun", lambda nfe: (nfe + 1) // 2),
    "DPM-Solver++(2M)": ("dpm_solver_pp_2m", lambda nfe: nfe),
}
DETERMINISTIC = ("DDIM", "EDM Heun", "DPM-Solver++(2M)")
MIXTURE = analytic.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
    jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]))


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def analytic_rows(nfes, num: int) -> list[dict]:
    schedule = schedules.make_schedule("linear", 1000)
    method = DDPM(model=analytic.DiscreteEpsNetwork(MIXTURE, schedule.alpha_bars),
                  schedule=schedule, image_shape=(1, 1, 2))
    x_init = jax.random.normal(jax.random.key(0), (num, 1, 1, 2))
    exact = np.asarray(MIXTURE.sample(jax.random.key(1), num))
    run = jax.jit(lambda x, rng, name, steps: method.sample(
        None, rng, x, sampler=method.sampler(method=name, num_steps=steps))[0],
        static_argnums=(2, 3))
    reference = np.asarray(run(x_init, jax.random.key(2), "heun", 1000)).reshape(num, 2)
    rows = []
    for label, (name, steps_of) in SAMPLERS.items():
        for nfe in nfes:
            out = np.asarray(run(x_init, jax.random.key(2), name, steps_of(nfe))).reshape(num, 2)
            ode = (float(np.sqrt(np.mean(np.sum((out - reference) ** 2, -1))))
                   if label in DETERMINISTIC else float("nan"))
            rows.append(dict(setting="mixture", sampler=label, nfe=nfe,
                             frechet=_frechet(out, exact), ode_error=ode))
    return rows


def digits_rows(workdir: str, nfes, num: int, train_steps: int | None) -> list[dict]:
    from diffusion_jax.evaluation.digits_features import digits_feature_fn
    from diffusion_jax import runs

    config = digits_config.get_config()
    if train_steps is not None:  # the quick version: a tiny U-Net, a few steps
        config.model.update(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
        config.training.update(num_steps=train_steps, checkpoint_every=train_steps, batch_size=16)
    config.training.sample_at_end = False
    directory = os.path.join(workdir, "digits")
    if launcher.run(config, directory, "train") != 0:
        raise RuntimeError("training the digits model failed")
    mesh = parallel.make_mesh()
    method, state = runs.restore(config, directory, mesh)
    features = digits_feature_fn()
    reference = features(runs.training_images(config, 1797))[0]
    batch = -(-min(num, 500) // mesh.devices.size) * mesh.devices.size
    rows = []
    for label, (name, steps_of) in SAMPLERS.items():
        for nfe in nfes:
            images = sampling.generate(method, state.ema_params, jax.random.PRNGKey(1), num,
                                       batch, mesh,
                                       method.sampler(method=name, num_steps=steps_of(nfe)))
            rows.append(dict(setting="digits", sampler=label, nfe=nfe,
                             frechet=_frechet(features(images)[0], reference),
                             ode_error=float("nan")))
    return rows


def _table(rows) -> str:
    lines = ["| setting | sampler | NFE | Frechet distance | ODE error |", "|---|---|---|---|---|"]
    for r in rows:
        ode = "" if np.isnan(r["ode_error"]) else f"{r['ode_error']:.4f}"
        lines.append(f"| {r['setting']} | {r['sampler']} | {r['nfe']} | {r['frechet']:.4f} | {ode} |")
    return "\n".join(lines)


def _plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r["setting"] for r in rows})
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for label in SAMPLERS:
            pts = [(r["nfe"], r["frechet"]) for r in rows
                   if r["setting"] == setting and r["sampler"] == label]
            ax.plot(*zip(*pts), marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="network evaluations",
               ylabel="Frechet distance", title=setting)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(workdir: str, arg=None) -> int:
    if arg not in (None, "", "quick"):
        raise ConfigError(f"unknown argument {arg!r} for experiments/sampler_nfe.py; valid: quick")
    quick = arg == "quick"
    os.makedirs(workdir, exist_ok=True)
    nfes = (10, 20) if quick else (10, 20, 35, 50, 100, 1000)
    rows = analytic_rows(nfes, 256 if quick else 20000)
    rows += digits_rows(workdir, nfes[:1] if quick else nfes, 16 if quick else 2000,
                        2 if quick else None)
    write_results(workdir, "sampler_nfe", rows, _table(rows), _plot)
    return 0

