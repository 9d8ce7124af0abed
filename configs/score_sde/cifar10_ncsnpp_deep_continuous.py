"""NCSN++ cont. (deep, VE) on CIFAR-10: the paper's best FID (Song et al. 2021, Table 3: FID
2.20 / IS 9.89 with PC; the released `configs/ve/cifar10_ncsnpp_deep_continuous.py`).

As `cifar10_ncsnpp_continuous.py` with 8 residual blocks per resolution: 107,587,075
parameters; 950k iterations (App. H). Same [-1, 1] data / sigma 0.02..100 note.
"""
from configs import base
from diffusion_jax.models import ncsnpp


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for {__name__}")
    config = base.score_sde_config("vesde")
    config.model.update(ncsnpp.ncsnpp_cifar10_kwargs(continuous=True, deep=True))
    config.training.num_steps = 950_000
    return config
