"""Consistency distillation on CIFAR-10 with the LPIPS distance (Song et al. 2023, Table 1 and
Table 3; FID 3.55 with one step, 2.93 with two).

`base.consistency_config("cd")`: the EDM NCSN++ student (56,395,651 parameters) initialised
from its teacher, N = 18, Heun teacher step, mu = 0, RAdam 4e-4, batch 512, 800k iterations.
The teacher is an EDM CIFAR-10 run of this codebase (`configs/edm/cifar10_uncond.py` with
`--config.model.name=ncsnpp` keys of the NCSN++ preset, so the student can start from it):
pass its work directory as `--config.consistency.teacher_workdir=DIR`. LPIPS needs the VGG /
LPIPS weights as a local file: `--config.consistency.lpips_weights=lpips_vgg.npz` (made by
`tools/convert_lpips_weights.py`). Needs the TFDS cifar10 data set in `data.data_dir`.
"""
from configs import base


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/consistency/cifar10_cd_lpips.py")
    return base.consistency_config("cd")
