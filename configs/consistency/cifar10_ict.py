"""Improved consistency training on CIFAR-10 (Song & Dhariwal 2023, Tables 2 and 3; FID 2.83
with one step, 2.46 with two, as listed in ../shared/REFERENCE.md).

The EDM NCSN++ network (56,395,651 parameters; the Fourier features of c_noise at scale 0.02
instead of 16, and dropout 0.3, Sec. 3.1), no target EMA (theta- = stop-gradient of theta),
pseudo-Huber distance with c = 0.00054 sqrt(3072) = 0.03, the doubling curriculum
N(k) = min(10 2^floor(k / K'), 1280) + 1, log-normal level sampling (P_mean -1.1, P_std 2.0),
weighting 1 / (sigma_{i+1} - sigma_i); batch 1024, RAdam lr 1e-4, no warmup, EMA 0.99993 for
the evaluated weights, 400k iterations. The optimiser settings are our reading of the paper's
appendix; check them against it before quoting a reproduction.
"""
from configs import base


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/consistency/cifar10_ict.py")
    config = base.consistency_config("ict")
    config.model.update(dropout=0.3, fourier_scale=0.02)
    config.consistency.update(distance="pseudo_huber", weighting="icm", s0=10, s1=1280)
    config.training.update(num_steps=400_000, batch_size=1024, ema_decay=0.99993)
    config.optim.update(lr=1e-4, warmup_steps=0)
    return config
