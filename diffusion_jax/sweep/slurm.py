"""An experiment as SLURM job arrays, so a cluster's own scheduler runs its members.

`launch.py --experiment=FILE --workdir=DIR --emit=slurm` writes, under `DIR/slurm/`:
- `train.sbatch`: one array task per training run (`train/<training>`);
- `members.sbatch`: one array task per member (`members/<member>`: its sample / eval modes in
  order), submitted with `--dependency=afterany` on the training array, so a member whose
  training failed fails with that error instead of waiting for ever;
- `report.sbatch`: `launch.py --report=DIR` once every member has finished;
- `submit.sh`: submits the three in that order (`bash DIR/slurm/submit.sh`).
Each array task runs `launch.py --experiment=FILE --workdir=DIR --job=NAME` (`runner.run_job`),
which records `done.json` / `failed.json` and the logs exactly as the local runner does, and
skips a finished job, so submitting again after a failure or a preemption reruns only what is
not done (training resumes from its checkpoint). `DIR` must be a path every node sees.
`--slurm_options` adds `#SBATCH` lines to the array scripts (e.g. `--gres=gpu:1
--time=24:00:00 --partition=NAME`).
"""
from __future__ import annotations

import os
import shlex
import sys

from diffusion_jax.config_files import ROOT


def _array_script(name: str, directory: str, jobs: list[str], base: list[str],
                  options: list[str]) -> str:
    """A bash job-array script: task i runs `base --job=jobs[i]`."""
    logs = os.path.join(directory, "slurm", "logs")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --array=0-{len(jobs) - 1}",
             f"#SBATCH --output={logs}/{name}_%a.out", f"#SBATCH --error={logs}/{name}_%a.err",
             *(f"#SBATCH {option}" for option in options),
             f"cd {shlex.quote(ROOT)}",
             "JOBS=(" + " ".join(shlex.quote(j) for j in jobs) + ")",
             "exec " + shlex.join(base) + ' --job="${JOBS[$SLURM_ARRAY_TASK_ID]}"']
    return "\n".join(lines) + "\n"


def write_scripts(experiment_arg: str, directory: str, jobs, extra_args=(),
                  options=()) -> str:
    """Write the scripts of `jobs` (`runner.plan`, for the experiment file `experiment_arg`)
    into `directory/slurm/`; returns the path of `submit.sh`."""
    out = os.path.join(directory, "slurm")
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    base = [sys.executable, "launch.py", f"--experiment={experiment_arg}",
            f"--workdir={directory}", *extra_args]
    trainings = [j.name for j in jobs if j.after is None]
    members = [j.name for j in jobs if j.after is not None]
    scripts = {
        "train.sbatch": _array_script("train", directory, trainings, base, list(options)),
        "members.sbatch": _array_script("members", directory, members, base, list(options)),
        "report.sbatch": "\n".join([
            "#!/bin/bash", "#SBATCH --job-name=report",
            f"#SBATCH --output={out}/logs/report.out", f"cd {shlex.quote(ROOT)}",
            "exec " + shlex.join([sys.executable, "launch.py", f"--report={directory}"])]) + "\n",
        "submit.sh": "\n".join([
            "#!/bin/bash", "set -euo pipefail",
            f"train=$(sbatch --parsable {shlex.quote(os.path.join(out, 'train.sbatch'))})",
            "members=$(sbatch --parsable --dependency=afterany:${train%%;*} "
            f"{shlex.quote(os.path.join(out, 'members.sbatch'))})",
            "report=$(sbatch --parsable --dependency=afterany:${members%%;*} "
            f"{shlex.quote(os.path.join(out, 'report.sbatch'))})",
            'echo "submitted: train ${train%%;*}, members ${members%%;*}, report '
            '${report%%;*}"']) + "\n",
    }
    for name, text in scripts.items():
        path = os.path.join(out, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    return os.path.join(out, "submit.sh")
