"""DDPM++ cont. (deep, sub-VP) on CIFAR-10: the paper's best likelihood row (Song et al. 2021,
Table 2: NLL 2.99 bits/dim, FID 2.41 / IS 9.57 with PC in Table 3, ODE FID 2.92; the released
`configs/subvp/cifar10_ddpmpp_deep_continuous.py`).

As `cifar10_ddpmpp_deep_continuous.py` (106,632,579 parameters, 950k iterations) with the
sub-VP SDE. Sample with `--config.sampling.method=ode` for the ODE row; `--mode=eval` reports
test-set bits/dim over the whole 10,000-image test set.
"""
from configs.score_sde import cifar10_ddpmpp_deep_continuous


def get_config(arg=None):
    config = cifar10_ddpmpp_deep_continuous.get_config(arg)
    config.sde.name = "subvpsde"
    return config
