"""EDM on CIFAR-10 (Karras et al. 2022, Table 2, config F: FID 1.97 unconditional, 1.79
class-conditional, Heun with 18 steps = 35 network evaluations). Two training runs:

    python3 launch.py --experiment=experiments/edm_cifar10.py --workdir=runs/edm_cifar10 \
        --config.data.data_dir=DIR --config.eval.inception_weights=inception_fid.npz

`:digits` (or `:quick`): both rows on `configs/edm/digits.py` and `digits_cond.py` with a tiny
network trained for 10 steps, sampled with the same 35-evaluation Heun sampler.
"""
from experiments._paper import Row, paper_experiment

ROWS = [Row("configs/edm/cifar10_uncond.py", "configs/edm/digits.py", "FID 1.97 (35 NFE)"),
        Row("configs/edm/cifar10_cond.py", "configs/edm/digits_cond.py", "FID 1.79 (35 NFE)")]
TINY = {"model.nf": 8, "model.attn_resolutions": (), "training.num_steps": 10,
        "training.batch_size": 16, "training.checkpoint_every": 10, "training.log_every": 5,
        "training.sample_at_end": False, "optim.warmup_steps": 0, "sampling.batch_size": 8,
        "eval.num_samples": 16, "eval.batch_size": 8, "eval.num_reference": 64}


def get_experiment(arg=None):
    return paper_experiment(
        arg, ROWS, name="edm_cifar10", metrics=("fid", "inception_score"), digits_overrides=TINY,
        description="EDM (Karras et al. 2022) on CIFAR-10, unconditional and class-conditional, "
                    "Heun sampler with 35 network evaluations.")
