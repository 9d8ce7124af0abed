"""EDM on CIFAR-10, class-conditional (Karras et al. 2022, Table 2 config F; FID 1.79 at 35 NFE).

`cifar10_uncond.py` with the label embedding of EDM's conditional DDPM++. Departure from the
paper: labels are dropped with probability 0.1 (label `num_classes` = null) so that
`sampling.guidance_scale` > 1 (classifier-free guidance, Ho & Salimans 2022) can be used; the
paper's conditional model has no label dropout, and guidance_scale = 1 samples it unguided.
"""
from configs.edm import cifar10_uncond


def get_config(arg=None):
    config = cifar10_uncond.get_config(arg)
    config.model.class_conditional = True
    config.edm.label_dropout = 0.1
    return config
