"""Writes the NVlabs/edm2 reference fixtures of the EDM2 tests (`tests/test_edm2_unet.py`,
`tests/test_posthoc_ema.py`), from the official code.

    /work/refvenv/bin/python tools/make_edm2_fixtures.py --edm2_repo DIR [--out_dir tests/data]

DIR is a checkout of github.com/NVlabs/edm2 (its `training/networks_edm2.py` and
`training/phema.py` are imported from there; the fixtures were made at commit 4bf8162). Needs
torch. Writes:

- `edm2_unet_cond.npz`: a tiny class-conditional `Precond` (16x16x4, model_channels 8,
  channel_mult [1, 2, 2], 2 blocks, attention at 8x8 and in the 4x4 `in0` block with 4 channels
  per head, channel_mult_noise 2, channel_mult_emb 3, 10 classes, logvar_channels 16,
  non-default balances label 0.3 / concat 0.6 / res 0.4 / attn 0.2 and clip_act 2 so that a
  swapped branch or a misplaced clip shows). `edm2_unet_uncond.npz`: unconditional,
  channel_mult [1, 2], 1 block, attention only in the 8x8 `in0` block, NVlabs' default
  balances and clipping. Each holds the state dict under
  its own names (`unet.enc.16x16_conv.weight`, ...; N(0, 1) weights, the zero-initialised
  emb_gain and out_gain re-drawn), the inputs `x` (B, H, W, C), `sigma`, `labels` (int, the
  conditional one), and the outputs of the eval-mode network in float32: `F` = unet(c_in x,
  c_noise, onehot), `F_null` = the same with the all-zero one-hot, `D` and `logvar` =
  Precond(x, sigma, onehot, return_logvar=True). Outputs are NHWC.
- `edm2_phema.npz`: `training.phema` values: std_to_exp and exp_to_std on grids,
  power_function_beta, power_function_correlation on random pairs, solve_posthoc_coefficients
  for a snapshot set, and TraditionalEMA's beta.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

OUT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data")

TINY = dict(img_resolution=16, img_channels=4, model_channels=8, channel_mult=[1, 2, 2],
            num_blocks=2, attn_resolutions=[8], channels_per_head=4, logvar_channels=16,
            use_fp16=False)
COND = dict(label_dim=10, channel_mult_noise=2, channel_mult_emb=3, label_balance=0.3,
            concat_balance=0.6, res_balance=0.4, attn_balance=0.2, clip_act=2.0)
UNCOND = dict(label_dim=0, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])


def unet_fixture(torch, Precond, kwargs, seed):
    """State dict, inputs and outputs of one randomly initialised `Precond`."""
    torch.manual_seed(seed)
    net = Precond(**{**TINY, **kwargs}).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("emb_gain"):
                p.copy_(torch.randn([]))
            elif name.endswith("out_gain"):
                p.copy_(0.5 + torch.rand([]))
    batch, label_dim = 2, kwargs["label_dim"]
    x = torch.randn(batch, TINY["img_channels"], TINY["img_resolution"], TINY["img_resolution"])
    sigma = torch.tensor([0.3, 5.0])
    out = dict(x=x, sigma=sigma)
    onehot = None
    if label_dim:
        labels = torch.tensor([3, 7])
        onehot = torch.nn.functional.one_hot(labels, label_dim).float()
        out["labels"] = labels
    with torch.no_grad():
        s = sigma.reshape(-1, 1, 1, 1)
        c_in = 1 / (net.sigma_data**2 + s**2).sqrt()
        c_noise = sigma.log() / 4
        out["F"] = net.unet(c_in * x, c_noise, onehot)
        if label_dim:
            out["F_null"] = net.unet(c_in * x, c_noise, torch.zeros_like(onehot))
        out["D"], logvar = net(x, sigma, onehot, return_logvar=True)
        out["logvar"] = logvar.reshape(-1)
    arrays = {k: v.numpy() for k, v in out.items()}
    for k in ("x", "F", "F_null", "D"):
        if k in arrays:
            arrays[k] = arrays[k].transpose(0, 2, 3, 1)
    arrays.update({k: v.numpy().astype(np.float32) for k, v in net.state_dict().items()})
    return arrays


def phema_fixture(torch, phema):
    """Official post-hoc EMA values on fixed grids."""
    rng = np.random.default_rng(0)
    sigma_rel = np.array([0.01, 0.025, 0.05, 0.085, 0.10, 0.15, 0.2, 0.25, 0.28])
    gamma = np.array([0.0, 0.5, 1.0, 3.0, 6.94, 16.97, 50.0, 500.0])
    beta_std = np.array([0.05, 0.10, 0.05])
    beta_t, beta_delta = np.array([2048.0, 2048.0 * 1000, 8 << 20]), 2048.0
    a_t, b_t = rng.uniform(1e6, 1e8, 20), rng.uniform(1e6, 1e8, 20)
    a_std, b_std = rng.uniform(0.02, 0.25, 20), rng.uniform(0.02, 0.25, 20)
    in_t = np.repeat(np.arange(1, 9) * (8 << 20), 2).astype(np.float64)
    in_std = np.tile([0.05, 0.10], 8)
    out_std = np.array([0.03, 0.085, 0.15])
    trad = []
    settings = [(2048, 2048, 0.5, 0.05), (4 << 20, 512, 0.5, 0.05), (4 << 20, 512, 0.5, None),
                (1 << 30, 4096, 2.0, 0.09)]  # cur_nimg, batch, halflife_Mimg, rampup_ratio
    for cur_nimg, batch, halflife_mimg, rampup in settings:
        net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64).requires_grad_(False)
        net.weight.fill_(0.0)
        ema = phema.TraditionalEMA(net, halflife_Mimg=halflife_mimg, rampup_ratio=rampup)
        net.weight.fill_(1.0)
        ema.update(cur_nimg=cur_nimg, batch_size=batch)
        beta = 1.0 - ema.ema.weight.item()
        trad.append((cur_nimg, batch, halflife_mimg * 1e6, np.nan if rampup is None else rampup,
                     beta))
    return dict(
        sigma_rel=sigma_rel, std_to_exp=phema.std_to_exp(sigma_rel),
        gamma=gamma, exp_to_std=phema.exp_to_std(gamma),
        beta_std=beta_std, beta_t=beta_t, beta_delta=np.float64(beta_delta),
        beta=phema.power_function_beta(beta_std, beta_t, beta_delta),
        a_t=a_t, a_std=a_std, b_t=b_t, b_std=b_std,
        correlation=phema.power_function_correlation(a_t, a_std, b_t, b_std),
        in_t=in_t, in_std=in_std, out_t=np.float64(in_t[-1]), out_std=out_std,
        coefficients=phema.solve_posthoc_coefficients(in_t, in_std, in_t[-1], out_std),
        traditional=np.array(trad, np.float64),  # cur_nimg, batch, halflife images, rampup, beta
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edm2_repo", required=True, help="a checkout of NVlabs/edm2")
    parser.add_argument("--out_dir", default=OUT_DIR)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.edm2_repo))
    import torch
    from training import phema
    from training.networks_edm2 import Precond

    os.makedirs(args.out_dir, exist_ok=True)
    fixtures = {"edm2_unet_cond.npz": unet_fixture(torch, Precond, COND, seed=0),
                "edm2_unet_uncond.npz": unet_fixture(torch, Precond, UNCOND, seed=1),
                "edm2_phema.npz": phema_fixture(torch, phema)}
    for name, arrays in fixtures.items():
        path = os.path.join(args.out_dir, name)
        np.savez_compressed(path, **arrays)
        print(f"{path}: {len(arrays)} arrays, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
