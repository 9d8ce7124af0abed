"""Running an experiment: every member-mode is a `launch.py` subprocess, so one member's failure
stops no other, its error line is the last line of its stderr, and its exact command can be run
by hand, on a cluster or on a TPU host (`--dry_run` prints them).

The experiment directory DIR holds:
- `experiment.json`: the experiment and its members (`status` and `report` read only this and
  the directories below, never the experiment file);
- `train/<training name>/`: the `--mode=train` work directory of one training run, shared by
  the members that differ only in `sampling.*`, `eval.*` and `edit.*` keys; `done.json` once
  trained. An interrupted run re-runs its command and `launch.py` resumes from the newest
  checkpoint by itself;
- `members/<member name>/`: the member's own work directory. `sample` and `eval` run there with
  `--train_workdir=DIR/train/<training name>`: they restore that run's checkpoint but write their
  samples, `eval/step_<N>/`, `metrics.jsonl`, `config.json` and `run.json` here, so members
  sharing a checkpoint never overwrite each other. `member.json` (its axis values and training
  run), `logs/` (`<mode>.out`, `<mode>.err` of the last attempt), and at the end `done.json`
  (the collected metrics) or `failed.json` (the error line);
- `status.json` (the live view, `status.py`) and `results.md`, `results.csv`, `plots/`
  (`report.py`).
A member with `done.json` is finished and skipped on a re-run; any other member runs (again).
A cluster's scheduler can run the jobs instead of the local pool: `run_job` runs one job by name
(what each array task of `slurm.write_scripts` does), recording it the same way.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from diffusion_jax.config_files import ROOT, check_key, load_config
from diffusion_jax.errors import ConfigError
from diffusion_jax.sweep import report, status
from diffusion_jax.sweep.spec import (CONFIG_AXIS, Experiment, is_training_key, member_name,
                                      training_name)
from diffusion_jax.workdir import read_metrics

POLL_S = 0.2


def flag_value(value) -> str:
    """A value as `launch.py --config.key=VALUE` reads it back."""
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return str(value)


def command(experiment: Experiment, values: dict, mode: str, workdir: str,
            extra_args=(), train_workdir: str = "") -> list[str]:
    """The launch.py command of one mode of a member (training: its training values only).
    It runs from the repository root, where the experiment's config paths are relative to."""
    values = dict(values)
    config = values.pop(CONFIG_AXIS, experiment.config)
    if mode == "train":
        values = {k: v for k, v in values.items() if is_training_key(k)}
    overrides = {**experiment.overrides, **values}
    argv = [sys.executable, "launch.py", f"--config={config}",
            *(f"--config.{k}={flag_value(v)}" for k, v in overrides.items()), *extra_args,
            f"--workdir={workdir}", f"--mode={mode}"]
    return argv + ([f"--train_workdir={train_workdir}"] if train_workdir else [])


@dataclasses.dataclass
class Job:
    """One unit of work: a training run (`train/...`) or a member's post-training modes
    (`members/...`, after its training). `commands` are (mode, argv) run in order."""

    name: str
    workdir: str
    commands: list
    members: list
    after: Job | None = None
    values: dict = dataclasses.field(default_factory=dict)  # a member's axis values
    state: str = "pending"  # pending, running, done, failed
    mode: str = ""
    error: str = ""


def plan(experiment: Experiment, members: list[dict], directory: str,
         extra_args=()) -> list[Job]:
    """The jobs of every member, each training run once, before the members that use it."""
    jobs, trainings = [], {}
    for values in members:
        name, train = member_name(values), training_name(values)
        if train not in trainings:
            train_dir = os.path.join(directory, "train", train)
            trainings[train] = Job(f"train/{train}", train_dir, [
                ("train", command(experiment, values, "train", train_dir, extra_args))], [])
            jobs.append(trainings[train])
        training = trainings[train]
        training.members.append(name)
        member_dir = os.path.join(directory, "members", name)
        jobs.append(Job(f"members/{name}", member_dir, [
            (mode, command(experiment, values, mode, member_dir, extra_args, training.workdir))
            for mode in experiment.modes[1:]], [name], after=training, values=values))
    for job in jobs:
        if os.path.exists(os.path.join(job.workdir, "done.json")):
            job.state = "done"
    return jobs


def check_extra_args(experiment: Experiment, extra_args) -> None:
    """`--config.key=value` arguments given with `--experiment` go to every member's commands;
    their keys must exist in every base config and not be set by the experiment."""
    for path in experiment.config_files():
        config = load_config(path)
        for arg in extra_args:
            if not arg.startswith("--config.") or "=" not in arg:
                raise ConfigError(f"{arg!r}: only --config.KEY=VALUE can be added to every member")
            key = arg[len("--config."):].split("=", 1)[0]
            check_key(config, key)
            if key in experiment.overrides or key in experiment.axes():
                raise ConfigError(f"{key!r} is set by the experiment; it cannot be added to "
                                  f"every member")


def check_same_experiment(experiment: Experiment, directory: str, extra_args) -> None:
    """A directory that already holds an experiment must have been run with the same base
    config, fixed overrides, modes and extra arguments: member names encode only the axes, so
    anything else would mix results. Adding axis values or seeds is fine."""
    path = os.path.join(directory, "experiment.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        before = json.load(f)
    now = json.loads(json.dumps(dict(experiment=experiment.to_json(), extra_args=list(extra_args))))
    for key in ("config", "overrides", "modes"):
        if before["experiment"][key] != now["experiment"][key]:
            raise ConfigError(f"{directory} holds an experiment with another {key}: "
                              f"{before['experiment'][key]!r}; use a new --workdir")
    if before["extra_args"] != now["extra_args"]:
        raise ConfigError(f"{directory} was run with the arguments {before['extra_args']}; "
                          f"use them again or a new --workdir")


def dry_run(experiment: Experiment, directory: str, extra_args=(), out=sys.stdout) -> int:
    """Print every member and the commands it needs (finished ones marked), running nothing."""
    members = experiment.validate()
    check_extra_args(experiment, extra_args)
    jobs = plan(experiment, members, os.path.abspath(directory), extra_args)
    print(f"# {len(members)} members, {sum(j.name.startswith('train/') for j in jobs)} training "
          f"runs; run from {ROOT}", file=out)
    for job in jobs:
        note = " (done)" if job.state == "done" else ""
        if job.name.startswith("train/"):
            print(f"# {job.name}: trains {len(job.members)} member(s){note}", file=out)
        else:
            print(f"# {job.name}{note}", file=out)
        for _, argv in job.commands:
            print(shlex.join(argv), file=out)
    return 0


def local_gpus() -> list[str]:
    """The local GPU ids: CUDA_VISIBLE_DEVICES if set, else those `nvidia-smi -L` lists."""
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        return []
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(l for l in listing.splitlines() if l.startswith("GPU "))]


def worker_environments(parallel: int) -> list[dict]:
    """The environment of each of `parallel` workers: an equal slice of the local GPUs through
    CUDA_VISIBLE_DEVICES, or the unchanged environment (CPU, or one worker). A TPU host's chips
    belong to one process: run TPU members one per host from the `--dry_run` commands."""
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    gpus = local_gpus() if parallel > 1 else []
    if not gpus:
        return [dict(os.environ) for _ in range(parallel)]
    if parallel > len(gpus):
        raise ConfigError(f"--parallel={parallel} is more than the {len(gpus)} local GPUs")
    per = len(gpus) // parallel
    return [dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus[i * per:(i + 1) * per]))
            for i in range(parallel)]


def collect_metrics(train_dir: str, member_dir: str) -> dict:
    """A member's numbers: the last training log line (`loss`, ..., its `step`) and the newest
    `eval/step_<N>/metrics.json` of the member's directory."""
    metrics = {}
    training = [r for r in read_metrics(train_dir) if "loss" in r]
    if training:
        metrics.update({k: v for k, v in training[-1].items() if not k.startswith("eval/")})
    eval_dir = os.path.join(member_dir, "eval")
    steps = sorted(int(d[len("step_"):]) for d in os.listdir(eval_dir)
                   if d.startswith("step_")) if os.path.isdir(eval_dir) else []
    for step in reversed(steps):
        path = os.path.join(eval_dir, f"step_{step}", "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                metrics.update(json.load(f))
            break
    return metrics


def error_line(job: Job, mode: str, returncode: int) -> str:
    """`mode: <last non-empty line of stderr>` (of stdout when stderr is empty)."""
    lines = []
    for stream in ("err", "out"):
        path = os.path.join(job.workdir, "logs", f"{mode}.{stream}")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                lines = [l.strip() for l in f if l.strip()]
        if lines:
            break
    if returncode < 0:
        return f"{mode}: killed by signal {-returncode}"
    return f"{mode}: {lines[-1] if lines else f'exit status {returncode}'}"


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


class _Runner:
    """Starts ready jobs on free workers, polls them, and records each outcome."""

    def __init__(self, directory, jobs, environments, metrics, out, view=None):
        self.jobs, self.environments = jobs, environments
        self.running = {}  # worker -> (job, command index, Popen, log files)
        self.view = view or status.LiveView(directory, jobs, metrics, out)

    def run(self) -> None:
        self.view.update()
        while True:
            self._fail_orphans()
            for worker in range(len(self.environments)):
                if worker not in self.running:
                    job = next((j for j in self.jobs if j.state == "pending"
                                and (j.after is None or j.after.state == "done")), None)
                    if job is None:
                        break
                    self._start(job, worker)
            if not self.running:
                if any(j.state == "pending" for j in self.jobs):
                    continue  # jobs whose training just failed
                return
            time.sleep(POLL_S)
            for worker, (job, index, proc, logs) in list(self.running.items()):
                if proc.poll() is not None:
                    for f in logs:
                        f.close()
                    del self.running[worker]
                    self._finished(job, index, proc.returncode, worker)
            self.view.tick()

    def stop(self) -> None:
        """SIGTERM to every running command (training checkpoints and exits), wait, and record
        their jobs as pending again (a re-run resumes them)."""
        for _, _, proc, _ in self.running.values():
            proc.send_signal(signal.SIGTERM)
        for job, _, proc, logs in self.running.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            for f in logs:
                f.close()
            job.state, job.mode = "pending", ""
        if self.running:
            self.running.clear()
            self.view.update()

    def _fail_orphans(self) -> None:
        for job in self.jobs:
            if job.state == "pending" and job.after is not None and job.after.state == "failed":
                self._record_failure(job, job.after.error)

    def _start(self, job: Job, worker: int, index: int = 0) -> None:
        if index == 0:
            os.makedirs(os.path.join(job.workdir, "logs"), exist_ok=True)
            if os.path.exists(os.path.join(job.workdir, "failed.json")):
                os.remove(os.path.join(job.workdir, "failed.json"))
            if job.after is not None:
                _write_json(os.path.join(job.workdir, "member.json"),
                            dict(name=job.members[0], values=job.values, training=job.after.name))
        if index == len(job.commands):  # every mode has run
            self._record_done(job)
            return
        mode, argv = job.commands[index]
        logs = [open(os.path.join(job.workdir, "logs", f"{mode}.{s}"), "w") for s in ("out", "err")]
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.environments[worker], stdout=logs[0],
                                stderr=logs[1], stdin=subprocess.DEVNULL)
        self.running[worker] = (job, index, proc, logs)
        job.state, job.mode = "running", mode
        self.view.update(job)

    def _finished(self, job: Job, index: int, returncode: int, worker: int) -> None:
        mode = job.commands[index][0]
        if returncode != 0:
            self._record_failure(job, error_line(job, mode, returncode))
        else:
            self._start(job, worker, index + 1)

    def _record_done(self, job: Job) -> None:
        record = dict(commands=[argv for _, argv in job.commands], finished=time.time())
        if job.after is not None:
            record.update(name=job.members[0],
                          metrics=collect_metrics(job.after.workdir, job.workdir))
        _write_json(os.path.join(job.workdir, "done.json"), record)
        job.state, job.mode = "done", ""
        self.view.update(job)

    def _record_failure(self, job: Job, error: str) -> None:
        os.makedirs(job.workdir, exist_ok=True)
        _write_json(os.path.join(job.workdir, "failed.json"), dict(error=error, failed=time.time()))
        job.state, job.mode, job.error = "failed", "", error
        self.view.update(job)


def prepare(experiment: Experiment, directory: str, extra_args=(), title: str = ""):
    """Check the experiment, its extra arguments and the directory, write `experiment.json`;
    returns (absolute directory, the jobs of `plan`)."""
    members = experiment.validate()
    check_extra_args(experiment, extra_args)
    directory = os.path.abspath(directory)
    check_same_experiment(experiment, directory, extra_args)
    os.makedirs(directory, exist_ok=True)
    jobs = plan(experiment, members, directory, extra_args)
    _write_json(os.path.join(directory, "experiment.json"), dict(
        title=title or os.path.basename(directory), experiment=experiment.to_json(),
        extra_args=list(extra_args),
        members=[dict(name=member_name(v), values=v, training=training_name(v))
                 for v in members]))
    return directory, jobs


def run_job(experiment: Experiment, directory: str, name: str, *, extra_args=(),
            title: str = "", out=sys.stdout) -> int:
    """One job of the plan, `train/<training>` or `members/<member>` (as `--dry_run` names
    them), run as the local runner runs it and recorded the same way (`done.json` or
    `failed.json`, logs): what one array task of a scheduler does. A finished job is skipped; a
    member whose training run is not done fails at once with that error. `status.json` shows
    the other jobs as their directories say (done, failed, else pending). 0 when done."""
    directory, jobs = prepare(experiment, directory, extra_args, title)
    job = next((j for j in jobs if j.name == name), None)
    if job is None:
        raise ConfigError(f"no job {name!r} in this experiment (--dry_run lists them)")
    for other in jobs:
        failed = os.path.join(other.workdir, "failed.json")
        if other is not job and other.state == "pending" and os.path.exists(failed):
            with open(failed) as f:
                other.state, other.error = "failed", json.load(f)["error"]
    view = status.LiveView(directory, jobs, experiment.metrics, out)
    runner = _Runner(directory, [job], [dict(os.environ)], experiment.metrics, out, view)
    if job.state == "done":
        return 0
    if job.after is not None and job.after.state != "done":
        runner._record_failure(job, f"its training run {job.after.name} is not done")
        return 1
    runner.run()
    return 0 if job.state == "done" else 1


def run_experiment(experiment: Experiment, directory: str, *, parallel: int = 1,
                   extra_args=(), title: str = "", out=sys.stdout) -> int:
    """Run every unfinished member (skipping those with `done.json`), `parallel` at a time, then
    write the report (headed `title`, e.g. the experiment file; default the directory's name).
    Returns 0 when every member is done, 1 when some failed. A SIGTERM stops the running
    commands (training saves a checkpoint) before exiting with 143."""
    directory, jobs = prepare(experiment, directory, extra_args, title)
    runner = _Runner(directory, jobs, worker_environments(parallel), experiment.metrics, out)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) if main_thread else None
    try:
        runner.run()
    finally:
        runner.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    path = report.write_report(directory)
    print(f"wrote {path}", file=out, flush=True)
    return 0 if all(j.state == "done" for j in jobs) else 1
