"""Score SDEs on CIFAR-10 (Song et al. 2021): NCSN++ cont. deep on the VE SDE with the PC sampler
(Table 3: FID 2.20, IS 9.89) and DDPM++ cont. deep on the sub-VP SDE with the PC sampler (FID
2.41; Table 2: 2.99 bits/dim) and the probability-flow ODE (FID 2.92). Two training runs, three
evaluations; bits/dim (the whole test set) only in the sub-VP PC row:

    python3 launch.py --experiment=experiments/score_sde_cifar10.py --workdir=runs/sde_cifar10 \
        --config.data.data_dir=DIR --config.eval.inception_weights=inception_fid.npz

`:digits` (or `:quick`): the rows on `configs/score_sde/digits_ve.py` and `digits_subvp.py` with a
tiny network trained for 10 steps, 100-step PC samplers and bits/dim over 16 test digits.
"""
from experiments._paper import Row, paper_experiment

VE = ("configs/score_sde/cifar10_ncsnpp_deep_continuous.py", "configs/score_sde/digits_ve.py")
SUBVP = ("configs/score_sde/cifar10_subvp_ddpmpp_deep_continuous.py",
         "configs/score_sde/digits_subvp.py")


def rows(bpd_examples: int) -> list[Row]:
    return [Row(*VE, "FID 2.20, IS 9.89",
                {"sampling.method": "pc", "eval.bpd_num_examples": 0}),
            Row(*SUBVP, "FID 2.41, NLL 2.99 bits/dim",
                {"sampling.method": "pc", "eval.bpd_num_examples": bpd_examples}),
            Row(*SUBVP, "ODE FID 2.92",
                {"sampling.method": "ode", "eval.bpd_num_examples": 0})]


TINY = {"model.nf": 8, "model.attn_resolutions": (), "training.num_steps": 10,
        "training.batch_size": 16, "training.checkpoint_every": 10, "training.log_every": 5,
        "training.sample_at_end": False, "optim.warmup_steps": 0, "sampling.num_steps": 100,
        "sampling.batch_size": 8, "eval.num_samples": 16, "eval.batch_size": 8,
        "eval.num_reference": 64, "eval.bpd_batch_size": 16}


def get_experiment(arg=None):
    digits = arg in ("digits", "quick")
    return paper_experiment(
        arg, rows(16 if digits else 10_000), name="score_sde_cifar10",
        metrics=("fid", "inception_score", "bits_per_dim", "nfe"), digits_overrides=TINY,
        description="Score SDEs (Song et al. 2021) on CIFAR-10: NCSN++ cont. deep (VE) and "
                    "DDPM++ cont. deep (sub-VP), predictor-corrector and probability-flow ODE "
                    "sampling, test-set bits/dim.")
