"""Consistency distillation on CIFAR-10 with the squared L2 distance (Song et al. 2023, Table 3
and Fig. 3: the l2 row of the metric ablation).

As `cifar10_cd_lpips.py` with `consistency.distance = "l2"` (mean squared error over the
pixels, as the reference code's `mean_flat`); no LPIPS weights needed. Pass the teacher's work
directory as `--config.consistency.teacher_workdir=DIR`.
"""
from configs import base


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/consistency/cifar10_cd_l2.py")
    config = base.consistency_config("cd")
    config.consistency.distance = "l2"
    return config
