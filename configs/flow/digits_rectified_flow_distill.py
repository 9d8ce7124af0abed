"""One-step distillation of a digits rectified flow on its reflow pairs (Liu et al. 2023,
Sec. 2.3 and 5.1; gnobitab/RectifiedFlow `configs/rectified_flow/
cifar10_rf_gaussian_reflow_distill_k=1.py`): the network of `digits_rectified_flow.py`
fine-tuned from a k-rectified flow (`training.init_from`) at t = 1 - 1e-3 only
(`flow.distill_steps=1`) on the fixed (sample, noise) pairs of `flow.coupling_dir`, then sampled
with one Euler step. The loss is the velocity's squared error (`flow.distill_loss='l2'`), not
their LPIPS: LPIPS weights are not shipped, and VGG-16 on 8x8 digits resized to 224 would cost
more than the whole flow; `--config.flow.distill_loss=lpips --config.flow.lpips_weights=F.npz`
runs their loss. Not a paper setting. The one Euler step evaluates at t = 1 while training saw
t = 1 - 1e-3 (their sampler's first time is their eps, ours is 1): a 1e-3 offset in the
network's time input.

Measured (2026-12-07, 2 CPU cores; --mode=eval, 1000 samples, digits features): digits Frechet
distance 6.14 in one step (1 NFE) after 1000 steps of distillation (2:28) on 20,000 pairs (6:57
to write) of the 2000-step `digits_rectified_flow.py` run (4:53), whose own single Euler step
gives 292 and whose 64-NFE Heun gives 2.39; sCT digits gives 8.53 in one step, EDM digits 3.07
at 35 NFE (2000 steps each).

Commands (the first two are `digits_rectified_flow.py`'s run and its pairs):
    python3 launch.py --config=configs/flow/digits_rectified_flow.py --workdir=runs/rf_digits
    python3 launch.py --mode=reflow_pairs --config=configs/flow/digits_rectified_flow.py \
        --train_workdir=runs/rf_digits --workdir=runs/rf_digits_pairs \
        --config.flow.coupling_dir=runs/rf_digits_coupling --config.reflow.num_pairs=20000
    python3 launch.py --config=configs/flow/digits_rectified_flow_distill.py \
        --workdir=runs/rf_digits_distill --config.flow.coupling_dir=runs/rf_digits_coupling \
        --config.training.init_from=runs/rf_digits
    python3 launch.py --mode=eval --config=configs/flow/digits_rectified_flow_distill.py \
        --workdir=runs/rf_digits_distill --config.flow.coupling_dir=runs/rf_digits_coupling
    python3 launch.py --mode=eval --config=configs/flow/digits_rectified_flow.py \
        --train_workdir=runs/rf_digits --workdir=runs/rf_digits_euler1 \
        --config.sampling.method=flow_euler --config.sampling.num_steps=1
"""
from configs.flow import digits_rectified_flow


def get_config(arg=None):
    config = digits_rectified_flow.get_config(arg)
    config.flow.update(distill_steps=1, distill_loss="l2")
    config.training.update(num_steps=1000, checkpoint_every=500)
    config.optim.update(warmup_steps=0)
    config.sampling.update(method="flow_euler", num_steps=1)
    return config
