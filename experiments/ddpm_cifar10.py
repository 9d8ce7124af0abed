"""DDPM on CIFAR-10 (Ho et al. 2020, Table 1: FID 3.17, IS 9.46, NLL <= 3.70 bits/dim with 1000
ancestral steps) and DDIM on the same model (Song et al. 2021a, Table 1, eta = 0: FID 13.36 /
6.84 / 4.67 / 4.16 with 10 / 20 / 50 / 100 steps). One training run, five evaluations:

    python3 launch.py --experiment=experiments/ddpm_cifar10.py --workdir=runs/ddpm_cifar10 \
        --config.data.data_dir=DIR --config.eval.inception_weights=inception_fid.npz

The NLL bound is not computed here (the DDPM method has no variational-bound evaluation), so
that published number stands alone. `:digits` (or `:quick`): the same five rows on the digits
DDPM (`configs/ddpm/digits.py`) with a tiny U-Net trained for 10 steps.
"""
from experiments._paper import Row, paper_experiment

DIGITS = "configs/ddpm/digits.py"
CIFAR10 = "configs/ddpm/cifar10.py"
ROWS = [Row(CIFAR10, DIGITS, "FID 3.17, IS 9.46, NLL <= 3.70 bits/dim",
            {"sampling.method": "ancestral", "sampling.num_steps": 1000})]
ROWS += [Row(CIFAR10, DIGITS, f"FID {fid}", {"sampling.method": "ddim", "sampling.num_steps": n})
         for n, fid in ((10, 13.36), (20, 6.84), (50, 4.67), (100, 4.16))]
TINY = {"model.ch": 8, "model.ch_mult": (1,), "model.num_res_blocks": 1,
        "model.attn_resolutions": (), "training.num_steps": 10, "training.batch_size": 16,
        "training.checkpoint_every": 10, "training.log_every": 5, "training.sample_at_end": False,
        "optim.warmup_steps": 0, "sampling.batch_size": 8, "eval.num_samples": 16,
        "eval.batch_size": 8, "eval.num_reference": 64}


def get_experiment(arg=None):
    return paper_experiment(
        arg, ROWS, name="ddpm_cifar10", metrics=("fid", "inception_score"),
        digits_overrides=TINY,
        description="DDPM (Ho et al. 2020) on CIFAR-10: ancestral sampling with 1000 steps "
                    "and DDIM (eta = 0) with 10 to 100 steps on the same model.")
