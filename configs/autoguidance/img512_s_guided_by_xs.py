"""EDM2-S on ImageNet-512 autoguided by EDM2-XS (Karras et al. 2024): FID 1.34, the number of
NVlabs/edm2 `generate_images.py` preset `edm2-img512-s-autog-fid` (FRONTIER.md section 4).

Main: `configs/edm2/img512_s.py` trained 2147483 kimg (2^31 images), sampled with its post-hoc
EMA at sigma_rel 0.070 (`edm2-img512-s-2147483-0.070.pkl`). Guide: EDM2-XS, conditional, trained
134217 kimg (2^27 images, 1/16 of the main model's training), post-hoc EMA sigma_rel 0.125
(`edm2-img512-xs-0134217-0.125.pkl`). w = 2.10 at every noise level (no interval), EDM2's Heun
sampler with 32 steps (sigma 0.002..80, rho 7: 63 evaluations of each network). The two EMA
lengths are properties of the two runs' checkpoints: `--mode=posthoc_ema` of each run writes
them (`ema.sigma_rel` 0.070 here, 0.125 for the guide), or `importers/run.py` writes the
released reconstructions as work directories; the guide's work directory is
`guidance.guide_workdir` (no default: pass it).
"""
from configs.edm2 import img512_s


def get_config(arg=None):
    config = img512_s.get_config()
    config.sampling.update(method="heun", num_steps=32, sigma_min=0.002, sigma_max=80.0,
                           rho=7.0, guidance_scale=2.10)
    config.ema.sigma_rel = 0.070
    return config
