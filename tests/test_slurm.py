"""`launch.py --experiment --emit=slurm`: job-array scripts a cluster's scheduler runs, tested
with a stand-in `sbatch` on PATH that runs each array task here, in order, as SLURM would with
the dependencies satisfied."""
import io
import json
import os
import stat
import subprocess
import sys

import pytest

from helpers import ROOT
from test_sweep import ENV, TINY, TWO_AXES, write_experiment

from diffusion_jax.errors import ConfigError
from diffusion_jax.sweep import Experiment, runner

LAUNCH = [sys.executable, os.path.join(ROOT, "launch.py")]
ONE_TRAINING = Experiment(config="configs/ddpm/digits.py", overrides=TINY,
                          grid={"sampling.method": ["ddim", "heun"]}, modes=("train", "sample"),
                          metrics=("loss",), description="One training run, two samplers.")

FAKE_SBATCH = r'''#!/usr/bin/env python3
"""A stand-in sbatch: records its arguments, runs every array task of the script now."""
import os, re, subprocess, sys
args = sys.argv[1:]
with open(os.environ["SBATCH_CALLS"], "a") as f:
    f.write(" ".join(args) + "\n")
script = args[-1]
text = open(script).read()
match = re.search(r"^#SBATCH --array=0-(\d+)$", text, re.M)
for task in range(int(match.group(1)) + 1 if match else 1):
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task))
    subprocess.run(["bash", script], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
count = sum(1 for _ in open(os.environ["SBATCH_CALLS"]))
print(f"{1000 + count};cluster")
'''


def emit(tmp_path, experiment, *extra):
    file = write_experiment(tmp_path / "experiment.py", experiment)
    workdir = tmp_path / "run"
    result = subprocess.run(LAUNCH + [f"--experiment={file}", f"--workdir={workdir}",
                                      "--emit=slurm", *extra],
                            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def test_the_scripts_hold_one_array_task_per_training_run_and_per_member(tmp_path):
    workdir = emit(tmp_path, TWO_AXES, "--slurm_options=--gres=gpu:1 --time=1:00:00")
    train = (workdir / "slurm" / "train.sbatch").read_text()
    members = (workdir / "slurm" / "members.sbatch").read_text()
    assert "#SBATCH --array=0-1\n" in train and "#SBATCH --array=0-3\n" in members
    assert "#SBATCH --gres=gpu:1\n" in members and "#SBATCH --time=1:00:00\n" in train
    assert "JOBS=(train/training.seed=0 train/training.seed=1)\n" in train
    assert " members/sampling.method=heun,training.seed=1)\n" in members
    submit = (workdir / "slurm" / "submit.sh").read_text()
    # members wait for the whole training array (afterany: a failed training fails its members)
    assert "--dependency=afterany:${train%%;*}" in submit
    assert "--dependency=afterany:${members%%;*}" in submit
    assert not (workdir / "train").exists()  # nothing ran


def test_a_member_whose_training_is_not_done_fails_with_that_error(tmp_path):
    name = "members/sampling.method=ddim,training.seed=0"
    assert runner.run_job(TWO_AXES, str(tmp_path), name, out=io.StringIO()) == 1
    failed = json.loads((tmp_path / "members" / "sampling.method=ddim,training.seed=0"
                         / "failed.json").read_text())
    assert failed["error"] == "its training run train/training.seed=0 is not done"
    with pytest.raises(ConfigError, match="no job 'members/nope'"):
        runner.run_job(TWO_AXES, str(tmp_path), "members/nope", out=io.StringIO())


@pytest.mark.slow  # one tiny training run and two sample runs in subprocesses
def test_submit_runs_every_job_through_the_scheduler_and_writes_the_report(tmp_path):
    workdir = emit(tmp_path, ONE_TRAINING)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(stat.S_IRWXU)
    calls = tmp_path / "calls.txt"
    env = dict(ENV, PATH=f"{bin_dir}:{os.environ['PATH']}", SBATCH_CALLS=str(calls))
    result = subprocess.run(["bash", str(workdir / "slurm" / "submit.sh")], capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "submitted: train 1001, members 1002, report 1003" in result.stdout
    lines = calls.read_text().splitlines()
    assert lines[1].startswith("--parsable --dependency=afterany:1001 ")
    for sampler in ("ddim", "heun"):
        member = workdir / "members" / f"sampling.method={sampler}"
        assert (member / "done.json").exists(), list(member.iterdir())
        assert any(n.startswith("sample_4_") and n.endswith(".png")
                   for n in os.listdir(member / "samples"))
    (training,) = (workdir / "train").iterdir()
    assert (training / "done.json").exists()
    assert "done" in (workdir / "results.md").read_text()
    status = json.loads((workdir / "status.json").read_text())
    assert status["counts"]["done"] == 2
