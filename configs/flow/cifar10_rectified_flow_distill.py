"""One-step distillation of a CIFAR-10 rectified flow with LPIPS (Liu et al. 2023, Sec. 5.1;
gnobitab/RectifiedFlow `configs/rectified_flow/cifar10_rf_gaussian_reflow_distill_k=1.py`:
`reflow_t_schedule='t0'`, `reflow_loss='lpips'`).

`cifar10_rectified_flow.py`'s network and optimizer fine-tuned from a k-rectified flow
(`--config.training.init_from=RUN`: its parameters and EMA; their code starts the model from
the previous run's EMA) on the (ODE sample, noise) pairs that `--mode=reflow_pairs` wrote in
`flow.coupling_dir`, at t = 1 - 1e-3 only (their t_L = eps), with LPIPS (VGG, images resized
to 224) between the one-step sample eps - v and the paired sample; sampled with one Euler step
(1 NFE). `flow.lpips_weights` is the .npz of `tools/convert_lpips_weights.py`. Their training
length for distillation is not stated apart from the configs' default of 1.3M iterations, kept
here; their published one-step FIDs are not quoted (not verified: FRONTIER.md 1b).
Needs the TFDS cifar10 data set prepared in `data.data_dir` (for the FID statistics).
"""
from configs.flow import cifar10_rectified_flow


def get_config(arg=None):
    config = cifar10_rectified_flow.get_config(arg)
    config.flow.update(distill_steps=1, distill_loss="lpips")
    config.data.update(random_flip=False)  # the pairs are fixed: no flips
    config.sampling.update(method="flow_euler", num_steps=1)
    return config
