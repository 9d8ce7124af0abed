"""Consistency training on the embedded 8x8 digits: the CPU version of `cifar10_ct.py` (Song
et al. 2023, CT) and, with the argument `ict`, of `cifar10_ict.py` (Song & Dhariwal 2023).

The network of `configs/edm/digits.py` (188,769 parameters) from random initialisation, 3000
steps of batch 128, RAdam 1e-3 with 200 warmup steps. 'ct': squared L2 distance (LPIPS needs
weights that do not exist for 8x8 digits), N(k) with s0 = 2, s1 = 150 and mu0 = 0: the target is
the online network under stop-gradient. The paper's mu0 = 0.9 is a time constant in steps,
(N - 1) / (s0 ln(1 / mu0)), up to 700 steps here, made for K = 800k: compressed into K = 3000
steps the curriculum outruns it (N climbs 18 levels per time constant instead of 0.07), the
target stays at the early posterior-mean solution and training collapses to grey images; the
same lag in curriculum units at K = 3000 needs ln(1 / mu0) 267 times larger, mu0 about 1e-12,
which is 0 (`losses.consistency.ct_target_decay`).
Measured (2026-12-04, 2 shared CPU cores, about 22 minutes of training; 500 samples, digits
Frechet distance): one step 23.7 (an earlier run of the same config: 18.9); two steps through
tau = 0.4 21.4 (`--config.sampling.method=multistep "--config.sampling.sigmas=(80.0,0.4)"`),
through tau = 0.8 23.9, and through the rho grid's tau = 2.5 (`--config.sampling.num_steps=2`)
26.5. `digits_cd.py` trained for the same 3000 steps: 12.7 one step, 12.2 two steps through 0.4.
Before mu0 = 0 this config gave 317 (grey squares).
'ict': pseudo-Huber with c = 0.00054 sqrt(64), no target EMA, N doubling from 10 to 1280,
log-normal levels, 1 / (sigma_{i+1} - sigma_i) weighting. Not a paper setting.
"""
from configs.consistency.digits_cd import digits_consistency_config


def get_config(arg=None):
    if arg not in (None, "", "ct", "ict"):
        raise ValueError(f"unknown argument {arg!r} for configs/consistency/digits_ct.py; "
                         f"valid: ct, ict")
    mode = arg or "ct"
    config = digits_consistency_config(mode)
    if mode == "ict":
        config.consistency.update(distance="pseudo_huber", weighting="icm", s0=10, s1=1280)
    else:
        config.consistency.update(distance="l2", mu0=0.0)
    config.training.update(num_steps=3000, checkpoint_every=1000, log_every=100)
    config.optim.update(lr=1e-3, warmup_steps=200)
    return config
