"""Class-conditional EDM on the embedded 8x8 digits, labels dropped with probability 0.1 so that
classifier-free guidance (`sampling.guidance_scale`) can be used. Not a paper setting."""
from configs.edm import digits


def get_config(arg=None):
    config = digits.get_config(arg)
    config.model.class_conditional = True
    config.edm.label_dropout = 0.1
    return config
