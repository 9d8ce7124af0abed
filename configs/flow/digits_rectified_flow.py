"""Rectified flow on the embedded 8x8 scikit-learn digits: trains on a 2-core CPU in minutes.

The recipe of `cifar10_rectified_flow.py` (linear path, velocity, t ~ U[1e-3, 1 - 1e-3], the
network on 999 t) on the network and budget of `configs/edm/digits.py` (the small DDPM++: 16
channels, (1, 2), 1 block, attention at 4x4, no dropout; 2000 steps of batch 128, Adam 1e-3
with warmup 200, EMA 0.999 with EDM's ramp-up), sampled with Heun on the ODE, 32 steps (64
network evaluations). Not a paper setting.

Measured (2026-12-04, 2 shared CPU cores, about 5 minutes of training; 1000 samples against the
digits features): digits_frechet_distance 2.386 with this sampler (64 NFE) and 1.977 with the
shared Heun, 18 steps (35 NFE); `configs/edm/digits.py` at the same budget (2000 steps of
batch 128, same network) 3.070 at 35 NFE. Commands:
    python3 launch.py --config=configs/flow/digits_rectified_flow.py --workdir=runs/rf_digits
    python3 launch.py --mode=eval --config=configs/flow/digits_rectified_flow.py \
        --workdir=runs/rf_digits
    python3 launch.py --mode=eval --config=configs/flow/digits_rectified_flow.py \
        --train_workdir=runs/rf_digits --workdir=runs/rf_digits_heun18 \
        --config.sampling.method=heun --config.sampling.num_steps=18
    python3 launch.py --config=configs/edm/digits.py --workdir=runs/edm_digits
    python3 launch.py --mode=eval --config=configs/edm/digits.py --workdir=runs/edm_digits
"""
from configs.flow import cifar10_rectified_flow


def get_config(arg=None):
    config = cifar10_rectified_flow.get_config(arg)
    config.data.update(dataset="digits", random_flip=False)
    config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        dropout=0.0)
    config.training.update(num_steps=2000, batch_size=128, checkpoint_every=1000, log_every=100,
                           ema_decay=0.999, ema_warmup="edm", ema_rampup_ratio=0.05)
    config.optim.update(lr=1e-3, warmup_steps=200)
    config.sampling.update(num_samples=100, batch_size=100, method="flow_heun", num_steps=32)
    config.eval.update(num_samples=1000, batch_size=500)
    return config
