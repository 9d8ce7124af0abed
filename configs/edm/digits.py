"""EDM on the embedded 8x8 scikit-learn digits: trains on a 2-core CPU in a few minutes.

The CIFAR-10 recipe of `cifar10_uncond.py` (Karras et al. 2022: EDM preconditioning and loss,
Adam without clipping, Heun with 18 steps) on a small DDPM++ (16 channels, (1, 2), 1 block,
attention at 4x4, no dropout; 188,769 parameters), 2000 steps of batch 128. Not a paper
setting; `configs/edm/cifar10_uncond.py` is.
"""
from configs.edm import cifar10_uncond


def get_config(arg=None):
    config = cifar10_uncond.get_config(arg)
    config.data.update(dataset="digits", random_flip=False)
    config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        dropout=0.0)
    config.training.update(num_steps=2000, batch_size=128, checkpoint_every=1000, log_every=100,
                           ema_decay=0.999)
    config.optim.update(lr=1e-3, warmup_steps=200)
    config.sampling.update(num_samples=100, batch_size=100)
    config.eval.update(num_samples=1000, batch_size=500)
    return config
