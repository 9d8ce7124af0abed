"""Which sampler for a score SDE? Predictors, correctors, the probability-flow ODE and the fast
denoiser samplers on one trained model per SDE (the digits analogue of Song et al. 2021,
Table 1 and Sec. 4.3): the digits Frechet distance (not FID; see `evaluation/digits_features`)
and the network evaluations of each sampler.

    python3 launch.py --experiment=experiments/sde_samplers.py --workdir=runs/sde_samplers

Each SDE trains once (`configs/score_sde/digits_{vp,subvp,ve}.py`); the sampler members differ
only in `sampling.*` keys, so they share its checkpoint. `:quick` is a CPU-seconds version (VP
only, a tiny net, 20 training steps, 16 samples) used by the tests.
"""
from diffusion_jax.sweep import Experiment

# (sampling.method, predictor, corrector, num_steps): PC with each predictor alone and with
# Langevin correction (the paper's P1000 / PC1000 rows), PC with 100 steps, the adaptive
# probability-flow ODE (rtol = atol = 1e-5), EDM Heun (35 evaluations), DPM-Solver++(2M).
SAMPLERS = [
    ("pc", "euler_maruyama", "none", 1000),
    ("pc", "reverse_diffusion", "none", 1000),
    ("pc", "ancestral", "none", 1000),
    ("pc", "euler_maruyama", "langevin", 1000),
    ("pc", "reverse_diffusion", "langevin", 1000),
    ("pc", "euler_maruyama", "none", 100),
    ("ode", "euler_maruyama", "none", 1000),
    ("heun", "euler_maruyama", "none", 18),
    ("dpm_solver_pp_2m", "euler_maruyama", "none", 20),
]
QUICK_SAMPLERS = [("pc", "euler_maruyama", "none", 20), ("pc", "reverse_diffusion", "langevin", 10),
                  ("heun", "euler_maruyama", "none", 5)]
QUICK = {"model.nf": 8, "model.attn_resolutions": (), "training.num_steps": 20,
         "training.batch_size": 32, "training.checkpoint_every": 20, "training.log_every": 10,
         "training.sample_at_end": False, "optim.warmup_steps": 0, "sampling.num_samples": 8,
         "sampling.batch_size": 8, "eval.num_samples": 16, "eval.batch_size": 8,
         "eval.num_reference": 64, "eval.bpd_num_examples": 0}


def get_experiment(arg=None) -> Experiment:
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown argument {arg!r} for experiments/sde_samplers.py; valid: quick")
    quick = arg == "quick"
    samplers = QUICK_SAMPLERS if quick else SAMPLERS
    method, predictor, corrector, steps = (list(axis) for axis in zip(*samplers))
    configs = (["configs/score_sde/digits_vp.py"] if quick else
               ["configs/score_sde/digits_vp.py", "configs/score_sde/digits_subvp.py",
                "configs/score_sde/digits_ve.py"])
    return Experiment(
        config=configs[0],
        grid={"config": configs},
        zipped={"sampling.method": method, "sampling.predictor": predictor,
                "sampling.corrector": corrector, "sampling.num_steps": steps},
        overrides=QUICK if quick else {"eval.bpd_num_examples": 0},
        modes=("train", "eval"),
        metrics=("digits_frechet_distance", "digits_kid", "nfe"),
        description="Score-SDE samplers on digits: quality (digits Frechet distance) versus "
                    "network evaluations, for VP, sub-VP and VE.")
