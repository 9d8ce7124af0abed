"""DDPM on CIFAR-10, the paper's setting (Ho et al. 2020, Sec. 4 and Appendix B; Table 1: FID 3.17).

U-Net ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16x16, dropout 0.1: 35,746,307
parameters. T = 1000, linear betas 1e-4..0.02, epsilon prediction, simple loss; Adam 2e-4,
batch 128, 5000 warmup steps, gradient clipping at norm 1, EMA 0.9999 from step 0 (the paper's;
`--config.training.ema_warmup=power` warms it up), random horizontal flips,
800k steps; ancestral sampling with sigma_t^2 = beta_t. `--mode=eval` also reports the
variational bound (Eq. 5, exact over all 1000 terms) in bits/dim on the whole 10,000-image test
set, the paper's NLL (Table 1, L_simple: <= 3.75 test, 3.72 train). `:bf16` selects bfloat16
compute (float32 parameters). Needs the TFDS cifar10 data set prepared in `data.data_dir`.
"""
from configs import base


def get_config(arg=None):
    config = base.ddpm_config()
    config.data.update(dataset="cifar10", random_flip=True)
    config.training.update(num_steps=800_000, batch_size=128, checkpoint_every=10_000,
                           log_every=100, ema_decay=0.9999)
    config.optim.update(lr=2e-4, warmup_steps=5000, grad_clip=1.0)
    config.sampling.update(num_samples=64, batch_size=64, method="ancestral", num_steps=1000)
    config.eval.update(num_samples=50_000, batch_size=1000, bpd_num_examples=10_000)
    if arg == "bf16":
        config.model.dtype = "bfloat16"
    elif arg not in (None, ""):
        raise ValueError(f"unknown argument {arg!r} for configs/ddpm/cifar10.py; valid: bf16")
    return config
