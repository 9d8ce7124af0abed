"""Few-step generation on digits: an EDM teacher at 35 network evaluations against consistency
distillation (CD, from that teacher), consistency training (CT) and improved CT (iCT) at 1, 2
and 4 steps (the digits analogue of Song et al. 2023, Table 1, and Song & Dhariwal 2023,
Table 2).

    python3 launch.py --experiment=experiments/consistency_steps.py --workdir=runs/cm_steps

Trains, through the launcher and each in its own directory under `workdir` (a finished run is
reused): the teacher `configs/edm/digits.py`, the CD student `configs/consistency/digits_cd.py`
initialised from it, and `configs/consistency/digits_ct.py` (CT) and `digits_ct.py:ict` (iCT)
from scratch. Quality is the digits Frechet distance to the training images (the feature space
of the shipped digits classifier, `evaluation/digits_features.py`: it tracks sample quality on
digits, it is not FID). Time per sample is the wall time of one compiled sampling call over the
whole batch (after a warm-up call), divided by the batch. Multistep consistency sampling uses
the first k levels of the (k + 1)-level rho grid from 80 to 0.002. Writes
`consistency_steps.csv`, `consistency_steps.png` and prints one Markdown table. `:quick` is a
CPU-sized version used by the tests: tiny networks, 4 training steps, 16 samples, no CT run,
1 and 2 steps.
"""
from __future__ import annotations

import os
import time

import jax

from configs.consistency import digits_cd, digits_ct
from configs.edm import digits as edm_digits
from diffusion_jax import launcher, parallel, sampling
from diffusion_jax.evaluation.frechet import feature_statistics, frechet_distance
from experiments._study import write_results

STEPS = (1, 2, 4)
QUICK = dict(model=dict(nf=8, attn_resolutions=()),
             training=dict(num_steps=4, batch_size=16, checkpoint_every=4, log_every=2))


def _configs(workdir: str, quick: bool) -> dict:
    """name -> (config, work directory) of the runs, teacher first (quick: no CT run)."""
    teacher_dir = os.path.join(workdir, "teacher")
    configs = {"EDM teacher": (edm_digits.get_config(), teacher_dir),
               "CD": (digits_cd.get_config(), os.path.join(workdir, "cd")),
               "CT": (digits_ct.get_config("ct"), os.path.join(workdir, "ct")),
               "iCT": (digits_ct.get_config("ict"), os.path.join(workdir, "ict"))}
    configs["CD"][0].consistency.teacher_workdir = teacher_dir
    if quick:
        del configs["CT"]
    for config, _ in configs.values():
        config.training.sample_at_end = False
        if quick:
            config.model.update(QUICK["model"])
            config.training.update(QUICK["training"])
            config.optim.warmup_steps = 0
    return configs


def _timed_generate(method, params, aux, num: int, batch: int, mesh, sampler):
    """(images, seconds per sample) of `sampling.generate`, timed after a warm-up call."""
    generate = lambda: sampling.generate(method, params, jax.random.PRNGKey(1), num, batch, mesh,
                                         sampler, aux=aux)
    generate()
    start = time.perf_counter()
    images = generate()
    return images, (time.perf_counter() - start) / num


def run(workdir: str, arg=None) -> int:
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown argument {arg!r} for experiments/consistency_steps.py; "
                         f"valid: quick")
    from diffusion_jax.evaluation.digits_features import digits_feature_fn
    from diffusion_jax import runs

    quick = arg == "quick"
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh()
    num = 16 if quick else 1000
    batch = -(-min(num, 500) // mesh.devices.size) * mesh.devices.size
    features = digits_feature_fn()
    reference = None
    rows = []
    for name, (config, directory) in _configs(workdir, quick).items():
        if launcher.run(config, directory, "train") != 0:
            raise RuntimeError(f"training {name} in {directory} failed")
        method, state = runs.restore(config, directory, mesh)
        if reference is None:
            reference = feature_statistics(features(runs.training_images(config, 1797))[0])
        settings = ([("heun", method.sampler(method="heun", num_steps=18), 35)]
                    if name == "EDM teacher" else
                    [("onestep" if k == 1 else "multistep",
                      method.sampler(method="multistep", num_steps=k), k)
                     for k in (STEPS[:2] if quick else STEPS)])
        for sampler, options, nfe in settings:
            images, seconds = _timed_generate(method, state.ema_params, state.aux, num, batch,
                                              mesh, options)
            fd = frechet_distance(*feature_statistics(features(images)[0]), *reference)
            rows.append(dict(model=name, sampler=sampler, nfe=nfe, digits_frechet=fd,
                             ms_per_sample=1e3 * seconds))
    write_results(workdir, "consistency_steps", rows, _table(rows), _plot)
    return 0


def _table(rows) -> str:
    lines = ["| model | sampler | NFE | digits Frechet distance | ms / sample |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['sampler']} | {r['nfe']} | {r['digits_frechet']:.4f} | "
              f"{r['ms_per_sample']:.3f} |" for r in rows]
    return "\n".join(lines)


def _plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        points = [(r["nfe"], r["digits_frechet"]) for r in rows if r["model"] == model]
        ax.plot(*zip(*points), marker="o", linestyle="-" if len(points) > 1 else "none",
                label=model)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations",
           ylabel="digits Frechet distance (not FID)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
