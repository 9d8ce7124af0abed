"""EDM on CIFAR-10, unconditional (Karras et al. 2022, Table 2 config F; FID 1.97 at 35 NFE).

EDM's DDPM++ network (Appendix F.4; `ncsnpp.edm_ddpmpp_cifar10_kwargs`: 128 channels, (2, 2, 2),
4 blocks, attention at 16, dropout 0.13; 55.73M parameters) under the EDM preconditioning
(sigma_data 0.5, c_noise = ln(sigma) / 4) and loss (ln sigma ~ N(-1.2, 1.2^2)). Adam lr 1e-3,
batch 512, the learning rate ramped up linearly over 10 Mimg (19,531 steps), no gradient
clipping, 200 Mimg (390,625 steps), random horizontal flips. EMA half-life 0.5 Mimg as a
per-step decay 0.5 ** (512 / 500,000) = 0.99929 with EDM's ramp-up (the half-life capped at 5%
of the images seen, `ema_rampup_ratio` 0.05: `training.ema_warmup="edm"`). EDM's non-leaky
geometric augmentation (p = 0.12) is not
implemented. Sampler: Heun, N = 18, sigma 0.002..80, rho 7: 35 network evaluations.
Needs the TFDS cifar10 data set prepared in `data.data_dir`.
"""
import ml_collections

from configs import base
from diffusion_jax.models import ncsnpp

BATCH = 512


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/edm/cifar10_uncond.py")
    config = base.base_config()
    config.method = "edm"
    config.model.update(name="ncsnpp", **ncsnpp.edm_ddpmpp_cifar10_kwargs())
    # loss_weighting: precond (lambda of the column) or an SNR weighting of losses/weighting.py
    config.edm = ml_collections.ConfigDict(dict(precond="edm", sigma_data=0.5, P_mean=-1.2,
                                                P_std=1.2, label_dropout=0.0,
                                                **base.weighting_defaults("precond")))
    config.data.update(dataset="cifar10", random_flip=True)
    config.training.update(num_steps=200_000_000 // BATCH, batch_size=BATCH,
                           checkpoint_every=10_000, log_every=100,
                           ema_decay=0.5 ** (BATCH / 500_000), ema_warmup="edm",
                           ema_rampup_ratio=0.05)
    config.optim.update(name="adam", lr=1e-3, warmup_steps=10_000_000 // BATCH, grad_clip=0.0,
                        beta1=0.9, beta2=0.999, eps=1e-8)
    # S_max: no upper limit, as a finite float so it survives JSON and command-line overrides.
    config.sampling.update(num_samples=64, batch_size=64, method="heun", num_steps=18,
                           sigma_min=0.002, sigma_max=80.0, rho=7.0, S_churn=0.0, S_min=0.0,
                           S_max=1e9, S_noise=1.0, eta=1.0, spacing="logsnr",
                           **base.solver_defaults(), **base.guidance_defaults())
    config.eval.update(num_samples=50_000, batch_size=1000)
    return config
