"""Score SDE (VP) on the embedded 8x8 digits: trains on a 2-core CPU in a few minutes.

The recipe of `cifar10_ddpmpp_continuous.py` (VP SDE, continuous DSM with reduce-mean,
Euler-Maruyama sampling, N = 1000, end time 1e-3) on a small DDPM++ (16 channels, (1, 2),
1 block, attention at 4x4, no dropout), 2000 steps of batch 128 at lr 1e-3, EMA 0.999.
`--mode=eval` reports the digits Frechet distance and bits/dim over the 297 test digits
(17 pixel levels). Not a paper setting; the `cifar10_*` configs are.
"""
from configs import base
from diffusion_jax.models import ncsnpp

SMALL_NET = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


def digits_config(sde: str, arg=None):
    """The shared digits setting of the three digits configs."""
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/score_sde/digits_*.py")
    config = base.score_sde_config(sde)
    kwargs = (ncsnpp.ncsnpp_cifar10_kwargs(continuous=True) if sde == "vesde"
              else ncsnpp.ddpmpp_cifar10_kwargs())
    config.model.update(kwargs, **SMALL_NET)
    config.data.update(dataset="digits", random_flip=False)
    config.training.update(num_steps=2000, batch_size=128, checkpoint_every=1000,
                           log_every=100, ema_decay=0.999,
                           ema_warmup="power")
    config.optim.update(lr=1e-3, warmup_steps=200)
    config.sampling.update(num_samples=100, batch_size=100)
    config.eval.update(num_samples=1000, batch_size=500, bpd_num_examples=297,
                       bpd_batch_size=304)
    return config


def get_config(arg=None):
    return digits_config("vpsde", arg)
