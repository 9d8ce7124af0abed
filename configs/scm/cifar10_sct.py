"""sCT on CIFAR-10, unconditional (Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models"): the paper reports a two-step FID of 2.06 (abstract; the
per-model table was not readable: /work/shared/FRONTIER.md Sec. 5).

What is verified from a primary source: only that number. What follows the paper as a secondary
source quotes it (xandergos/sCM-mnist): TrigFlow with sigma_d 0.5, t_max = arctan(80 / 0.5),
tangent warm-up over 10,000 steps, tangent normalisation c = 0.1, adaptive weighting, a
positional (not Fourier) time embedding with c_noise = t, two-step sampling through t_mid = 1.1.
UNVERIFIED (choices of this config, to be checked against the paper's Table / appendix before a
reproduction): the network, EDM's DDPM++ (`ncsnpp.edm_ddpmpp_cifar10_kwargs`: 55.73M parameters,
plus 129 of u(t); chosen for its positional embedding, dropout 0.13), P_mean -1.0 / P_std 1.4,
batch 512, Adam lr 1e-4 (beta2 0.99, eps 1e-8) without decay, 10 Mimg linear lr warm-up,
gradient clipping at 1, EMA 0.9999, 400k iterations, random flips. Needs the TFDS cifar10 data
set prepared in `data.data_dir`.
"""
from configs import base
from diffusion_jax.models import ncsnpp

BATCH = 512


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/scm/cifar10_sct.py")
    config = base.scm_config("sct")
    config.model.update(name="ncsnpp", **ncsnpp.edm_ddpmpp_cifar10_kwargs())
    config.scm.update(c_noise="t", P_mean=-1.0, P_std=1.4, tangent_warmup_steps=10_000,
                      tangent_c=0.1, adaptive_weighting=True)
    config.data.update(dataset="cifar10", random_flip=True)
    config.training.update(num_steps=400_000, batch_size=BATCH, checkpoint_every=10_000,
                           log_every=100, ema_decay=0.9999)
    config.optim.update(name="adam", lr=1e-4, warmup_steps=10_000_000 // BATCH, grad_clip=1.0,
                        beta1=0.9, beta2=0.99, eps=1e-8)
    config.sampling.update(num_samples=64, batch_size=64, method="multistep", num_steps=2)
    config.eval.update(num_samples=50_000, batch_size=1000)
    return config
