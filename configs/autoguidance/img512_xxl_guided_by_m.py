"""EDM2-XXL on ImageNet-512 autoguided by EDM2-M (Karras et al. 2024): FID 1.25, the abstract's
512x512 record and the number of NVlabs/edm2 `generate_images.py` preset
`edm2-img512-xxl-autog-fid` (FRONTIER.md section 4).

Main: `configs/edm2/img512_xxl.py` trained 939524 kimg, sampled with its post-hoc EMA at
sigma_rel 0.075 (`edm2-img512-xxl-0939524-0.075.pkl`). Guide: EDM2-M, conditional, trained
268435 kimg (2^28 images), post-hoc EMA sigma_rel 0.155 (`edm2-img512-m-0268435-0.155.pkl`).
w = 2.05 at every noise level (no interval), EDM2's Heun sampler with 32 steps (sigma
0.002..80, rho 7: 63 evaluations of each network). The two EMA lengths are properties of the
two runs' checkpoints: `--mode=posthoc_ema` of each run writes them (`ema.sigma_rel` 0.075
here, 0.155 for the guide), or `importers/run.py` writes the released reconstructions as work
directories; the guide's work directory is `guidance.guide_workdir` (no default: pass it).
"""
from configs.edm2 import img512_xxl


def get_config(arg=None):
    config = img512_xxl.get_config()
    config.sampling.update(method="heun", num_steps=32, sigma_min=0.002, sigma_max=80.0,
                           rho=7.0, guidance_scale=2.05)
    config.ema.sigma_rel = 0.075
    return config
