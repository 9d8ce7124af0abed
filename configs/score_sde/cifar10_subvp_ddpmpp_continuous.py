"""DDPM++ cont. (sub-VP) on CIFAR-10 (Song et al. 2021, Table 3: FID 2.61 / IS 9.56 with the PC
sampler, NLL 3.02 bits/dim in Table 2; the released `configs/subvp/
cifar10_ddpmpp_continuous.py`).

As `cifar10_ddpmpp_continuous.py` (61,804,419 parameters, VP hyperparameters, Euler-Maruyama
sampling ending at 1e-3) with the sub-VP SDE (Eq. 12), whose marginal std is 1 - alpha^2.
"""
from configs.score_sde import cifar10_ddpmpp_continuous


def get_config(arg=None):
    config = cifar10_ddpmpp_continuous.get_config(arg)
    config.sde.name = "subvpsde"
    return config
