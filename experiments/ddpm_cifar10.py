"""DDPM on CIFAR-10 (Ho et al. 2020, Table 1, L_simple: FID 3.17, IS 9.46, NLL <= 3.75 bits/dim
on the test set with 1000 ancestral steps) and DDIM on the same model (Song et al. 2021a, Table 1,
eta = 0: FID 13.36 / 6.84 / 4.67 / 4.16 with 10 / 20 / 50 / 100 steps). One training run, five
evaluations; the NLL (the variational bound of Eq. 5, exact over all 1000 terms, on the whole
test set) only in the ancestral row, as the bound does not depend on the sampler:

    python3 launch.py --experiment=experiments/ddpm_cifar10.py --workdir=runs/ddpm_cifar10 \
        --config.data.data_dir=DIR --config.eval.inception_weights=inception_fid.npz

`:digits` (or `:quick`): the same five rows on the digits DDPM (`configs/ddpm/digits.py`) with a
tiny U-Net trained for 10 steps and the bound over 16 test digits.
"""
from experiments._paper import Row, paper_experiment

DIGITS = "configs/ddpm/digits.py"
CIFAR10 = "configs/ddpm/cifar10.py"


def rows(bpd_examples: int) -> list[Row]:
    ancestral = Row(CIFAR10, DIGITS, "FID 3.17, IS 9.46, NLL <= 3.75 bits/dim",
                    {"sampling.method": "ancestral", "sampling.num_steps": 1000,
                     "eval.bpd_num_examples": bpd_examples})
    return [ancestral] + [
        Row(CIFAR10, DIGITS, f"FID {fid}", {"sampling.method": "ddim", "sampling.num_steps": n,
                                            "eval.bpd_num_examples": 0})
        for n, fid in ((10, 13.36), (20, 6.84), (50, 4.67), (100, 4.16))]


TINY = {"model.ch": 8, "model.ch_mult": (1,), "model.num_res_blocks": 1,
        "model.attn_resolutions": (), "training.num_steps": 10, "training.batch_size": 16,
        "training.checkpoint_every": 10, "training.log_every": 5, "training.sample_at_end": False,
        "optim.warmup_steps": 0, "sampling.batch_size": 8, "eval.num_samples": 16,
        "eval.batch_size": 8, "eval.num_reference": 64, "eval.bpd_batch_size": 16}


def get_experiment(arg=None):
    digits = arg in ("digits", "quick")
    return paper_experiment(
        arg, rows(16 if digits else 10_000), name="ddpm_cifar10",
        metrics=("fid", "inception_score", "bits_per_dim"), digits_overrides=TINY,
        description="DDPM (Ho et al. 2020) on CIFAR-10: ancestral sampling with 1000 steps "
                    "and DDIM (eta = 0) with 10 to 100 steps on the same model; test-set "
                    "bits/dim of the variational bound.")
