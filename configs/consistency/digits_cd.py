"""Consistency distillation on the embedded 8x8 digits from an EDM digits teacher: the CPU
version of `cifar10_cd_l2.py` (Song et al. 2023), in minutes on 2 cores.

Train the teacher first (`python3 launch.py --config=configs/edm/digits.py --workdir=T`), then
`python3 launch.py --config=configs/consistency/digits_cd.py
--config.consistency.teacher_workdir=T --workdir=S`. The student has the teacher's network
(`configs/edm/digits.py`: 188,769 parameters) and starts from its weights; N = 18, Heun teacher
step, mu = 0, squared L2 distance, RAdam 1e-4 (the CIFAR-10 4e-4 is too aggressive for a
student that starts at its teacher), 1000 steps of batch 128. Sampling: one step;
`--config.sampling.method=multistep --config.sampling.num_steps=2` for two.
`experiments/consistency_steps.py` runs teacher -> CD -> CT -> table. Not a paper setting.
"""
from configs import base
from configs.edm import digits as edm_digits


def digits_consistency_config(mode: str, arg=None):
    """What the digits CD and CT configs share: `base.consistency_config(mode)` with the
    network of `configs/edm/digits.py` (its `arg`), the digits data, batch 128, EMA 0.999, and
    100 samples / 1000 for eval."""
    config = base.consistency_config(mode)
    config.model = edm_digits.get_config(arg).model
    config.data.update(dataset="digits", random_flip=False)
    config.training.update(batch_size=128, ema_decay=0.999)
    config.sampling.update(num_samples=100, batch_size=100)
    config.eval.update(num_samples=1000, batch_size=500)
    return config


def get_config(arg=None):
    config = digits_consistency_config("cd", arg)
    config.consistency.distance = "l2"
    config.training.update(num_steps=1000, checkpoint_every=500, log_every=50)
    config.optim.update(lr=1e-4, warmup_steps=0)
    return config
