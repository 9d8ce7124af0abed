"""Stable Diffusion v2.1-base (Stability AI's stabilityai/stable-diffusion-2-1-base release):
512 x 512, epsilon prediction, the SD 2 U-Net on 64 x 64 x 4 latents, the penultimate layer of
OpenCLIP ViT-H/14's text transformer. Weights: `--config.sd.model_dir=DIR`, or
`--config.sd.checkpoint=v2-1_512-ema-pruned.safetensors` with `--config.sd.tokenizer_dir`.
Settings: `configs/base.py`, `stable_diffusion_config`.
"""
from configs.base import stable_diffusion_config


def get_config(arg=None):
    return stable_diffusion_config("sd21_base")
