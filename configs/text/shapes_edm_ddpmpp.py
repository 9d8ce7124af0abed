"""Text-to-image EDM on the captioned shapes with a small DDPM++ backbone.

`shapes_edm.py` (EDM, caption dropout 0.1, guidance 3, a 2-layer byte-token caption encoder)
with EDM's DDPM++ (`ncsnpp.edm_ddpmpp_cifar10_kwargs`, Karras et al. 2022, Appendix F) scaled
down to 32 channels, multipliers (1, 2), 1 block, attention at 8x8 and no dropout, whose
attention blocks are cross-attention transformer blocks over the caption (`cross_attention`,
Rombach et al. 2022): 1,050,627 parameters with the encoder. Not a paper setting.
"""
import ml_collections

from configs.text import shapes_edm
from diffusion_jax.models import ncsnpp


def get_config(arg=None):
    config = shapes_edm.get_config(arg)
    config.model = ml_collections.ConfigDict(dict(
        ncsnpp.edm_ddpmpp_cifar10_kwargs(), name="ncsnpp", dtype="float32",
        class_conditional=False, remat=False, nf=32, ch_mult=(1, 2), num_res_blocks=1,
        attn_resolutions=(8,), dropout=0.0, num_heads=4, transformer_depth=1))
    return config
