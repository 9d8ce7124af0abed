"""Consistency models on CIFAR-10: distillation with LPIPS (Song et al. 2023, Table 1: FID 3.55
with one step, 2.93 with two), consistency training (8.70 / 5.83) and improved CT (Song &
Dhariwal 2023: 2.83 / 2.46, as listed in ../shared/REFERENCE.md). Three training runs, six
evaluations; two-step sampling goes through the rho grid's middle level (about 2.5):

    python3 launch.py --experiment=experiments/consistency_cifar10.py --workdir=runs/cm_cifar10 \
        --config.consistency.teacher_workdir=EDM_RUN --config.consistency.lpips_weights=lpips.npz \
        --config.data.data_dir=DIR --config.eval.inception_weights=inception_fid.npz

EDM_RUN is a finished EDM CIFAR-10 run whose network is the consistency nets' NCSN++
(`configs/edm/cifar10_uncond.py` with the keys of `ncsnpp.edm_ncsnpp_cifar10_kwargs`), so the CD
student starts from it; CT and iCT ignore the teacher. `:digits` (or `:quick`): the same rows on
`configs/consistency/digits_cd.py` and `digits_ct.py[:ict]` with a tiny network for 10 steps;
its CD row needs a digits EDM teacher trained with the same tiny network keys (model.nf=8,
model.attn_resolutions=()), passed the same way.
"""
from experiments import edm_cifar10
from experiments._paper import Row, paper_experiment

CD = ("configs/consistency/cifar10_cd_lpips.py", "configs/consistency/digits_cd.py")
CT = ("configs/consistency/cifar10_ct.py", "configs/consistency/digits_ct.py:ct")
ICT = ("configs/consistency/cifar10_ict.py", "configs/consistency/digits_ct.py:ict")
ONE = {"sampling.method": "onestep", "sampling.num_steps": 1}
TWO = {"sampling.method": "multistep", "sampling.num_steps": 2}
ROWS = [Row(*CD, "FID 3.55 (1 step)", ONE), Row(*CD, "FID 2.93 (2 steps)", TWO),
        Row(*CT, "FID 8.70 (1 step)", ONE), Row(*CT, "FID 5.83 (2 steps)", TWO),
        Row(*ICT, "FID 2.83 (1 step)", ONE), Row(*ICT, "FID 2.46 (2 steps)", TWO)]
# the digits version trains the NCSN++ family's tiny net of the EDM table (same keys)
TINY = edm_cifar10.TINY


def get_experiment(arg=None):
    return paper_experiment(
        arg, ROWS, name="consistency_cifar10", metrics=("fid", "inception_score", "nfe"),
        digits_overrides=TINY,
        description="Consistency models on CIFAR-10 (Song et al. 2023; Song & Dhariwal 2023): "
                    "distillation from an EDM teacher with LPIPS, consistency training and "
                    "improved consistency training, one- and two-step sampling.")
