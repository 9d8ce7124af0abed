"""sCT (continuous-time consistency training, Lu & Song 2024) on the embedded 8x8 digits: the
CPU version of `cifar10_sct.py`, in a few minutes on 2 cores. Not a paper setting.

The network of `configs/edm/digits.py` (a small DDPM++ with attention at 4x4; 188,769
parameters, plus 129 of the adaptive weight u(t)) with c_noise = t, TrigFlow sigma_d 0.5,
P_mean -1.0 / P_std 1.4 (sCM-mnist's MNIST CM uses (-2, 1.6); the paper's values are
unverified), tangent warm-up over 500 steps (the paper's 10k scaled to this run), c = 0.1,
adaptive weighting; Adam 1e-3 (beta2 0.99, as sCM-mnist) with 100 warm-up steps, gradient
clipping at 1, 3000 steps of batch 128, EMA 0.999. Sampling: one step from t_max =
arctan(80 / 0.5); `--config.sampling.method=multistep --config.sampling.num_steps=2` for two
(t_mid = 1.1).

Measured (2026-12-07, 2 CPU cores shared with a test run; 10 min of training; --mode=eval,
1000 samples, digits features): digits Frechet distance 8.53 in one step, 6.64 in two, against
3.07 for `configs/edm/digits.py` at 35 NFE (2000 steps of the same network). At EDM's budget
(`--config.training.num_steps=2000`, 5:29 of training): 10.92 in one step, 8.25 in two.

    python3 launch.py --config=configs/scm/digits_sct.py --workdir=runs/sct
    python3 launch.py --config=configs/scm/digits_sct.py --mode=eval --train_workdir=runs/sct \
        --workdir=runs/sct_eval [--config.sampling.method=multistep --config.sampling.num_steps=2]
"""
from configs import base
from configs.edm import digits as edm_digits


def digits_scm_config(mode: str, arg=None):
    """What the digits sCT and sCD configs share: `base.scm_config(mode)` with the network of
    `configs/edm/digits.py` (its `arg`), the digits data, batch 128, EMA 0.999, 100 samples /
    1000 for eval."""
    config = base.scm_config(mode)
    config.model = edm_digits.get_config(arg).model
    config.data.update(dataset="digits", random_flip=False)
    config.training.update(batch_size=128, ema_decay=0.999, ema_warmup="power")
    config.sampling.update(num_samples=100, batch_size=100)
    config.eval.update(num_samples=1000, batch_size=500)
    return config


def get_config(arg=None):
    config = digits_scm_config("sct", arg)
    config.scm.update(P_mean=-1.0, P_std=1.4, tangent_warmup_steps=500)
    config.training.update(num_steps=3000, checkpoint_every=1000, log_every=100)
    config.optim.update(name="adam", lr=1e-3, warmup_steps=100, grad_clip=1.0, beta2=0.99)
    return config
