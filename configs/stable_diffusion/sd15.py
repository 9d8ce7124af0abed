"""Stable Diffusion v1.5 (Rombach et al. 2022; the runwayml/stable-diffusion-v1-5 release):
512 x 512, the 859,520,964-parameter U-Net (epsilon prediction) on 64 x 64 x 4 latents of the
83,653,863-parameter VAE (scale 0.18215), conditioned on CLIP ViT-L/14's text transformer
(123,060,480 parameters, last layer), scaled_linear betas 0.00085..0.012 over 1000 steps.
Weights: `--config.sd.model_dir=DIR` (the diffusers directory: unet/, text_encoder/, vae/,
tokenizer/, scheduler/), or `--config.sd.checkpoint=v1-5-pruned-emaonly.safetensors` with
`--config.sd.tokenizer_dir=DIR/tokenizer`. Settings: `configs/base.py`,
`stable_diffusion_config`.
"""
from configs.base import stable_diffusion_config


def get_config(arg=None):
    return stable_diffusion_config("sd15")
