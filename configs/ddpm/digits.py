"""DDPM on the embedded 8x8 scikit-learn digits: the default run, trains on a 2-core CPU.

The paper's recipe (Ho et al. 2020: linear betas 1e-4..0.02, T = 1000, epsilon prediction,
simple loss, Adam with warmup and clipping, EMA) on a small U-Net sized for 8x8x1 images, with
the EMA warmed up (`training.ema_warmup="power"`) so the short run samples from trained weights.
Not a paper setting; `configs/ddpm/cifar10.py` is. Sampling defaults to deterministic DDIM with
100 steps (Song et al. 2021, eta = 0) so the first run ends in minutes
(`benchmarks/first_run.py`); the paper's sampler is `--config.sampling.method=ancestral
--config.sampling.num_steps=1000` (1000 ancestral steps, sigma_t^2 = beta_t).
"""
from configs import base


def get_config(arg=None):
    config = base.ddpm_config()
    config.data.dataset = "digits"
    config.model.update(ch=48, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        dropout=0.0)
    config.training.update(num_steps=1500, batch_size=64, checkpoint_every=500,
                           log_every=50, ema_decay=0.995,
                           ema_warmup="power")
    config.optim.update(lr=1e-3, warmup_steps=100)
    config.sampling.update(num_samples=100, batch_size=100, method="ddim", num_steps=100)
    config.eval.update(num_samples=1000, batch_size=500)
    return config
