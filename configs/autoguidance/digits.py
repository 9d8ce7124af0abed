"""Autoguidance (Karras et al. 2024) on the embedded 8x8 digits, CPU-sized; not a paper setting.

The main model is `configs/edm/digits_cond.py` (class-conditional EDM, 188,945 parameters, 2000
steps of batch 128, EMA 0.999). The guide is the paper's recipe scaled down: the same network
family, smaller (nf 8 instead of 16: 48,073 parameters, `:guide`) and trained a quarter as long
(500 steps; the paper's XS guide of S saw 1/16 of S's training images) with a shorter EMA
(0.99), as the paper gives its guide its own EMA length. Sampling: Heun with 18 steps, D = D_guide + w (D_main -
D_guide) at every noise level with w = `sampling.guidance_scale` = 1.25 (the paper's img512
presets use 2.10 and 2.05).

Measured (2026-12-07, 2 shared and heavily loaded CPU cores; --mode=eval, 1000 samples, one
seed, digits features): digits_frechet_distance unguided 1.068; autoguided w = 1.25: 0.591,
1.5: 0.682, 2.0: 1.642, 3.0: 4.153; the main run's own step-1000 checkpoint as guide at
w = 1.5: 0.992; classifier-free guidance w = 1.5 (no guide): 1.371.

    python launch.py --config=configs/autoguidance/digits.py:main \\
        --workdir=runs/autoguidance_digits_main
    python launch.py --config=configs/autoguidance/digits.py:guide \\
        --workdir=runs/autoguidance_digits_guide
    python launch.py --config=configs/autoguidance/digits.py --mode=eval \\
        --train_workdir=runs/autoguidance_digits_main --workdir=runs/autoguidance_digits

arg: None, the sampling config (the main model's, with `guidance.guide_workdir` the guide run
above; train mode refuses it); 'main' or 'guide': the training configs of the two runs.
"""
from configs.edm import digits_cond

GUIDE_WORKDIR = "runs/autoguidance_digits_guide"
W = 1.25


def get_config(arg=None):
    config = digits_cond.get_config()
    if arg == "guide":
        config.model.nf = 8
        config.training.update(num_steps=500, checkpoint_every=500, ema_decay=0.99)
    elif arg in (None, ""):
        config.sampling.guidance_scale = W
        config.guidance.guide_workdir = GUIDE_WORKDIR
    elif arg != "main":
        raise ValueError(f"unknown argument {arg!r} for configs/autoguidance/digits.py "
                         f"(None, 'main' or 'guide')")
    return config
