"""diffusion_jax launcher.

    python launch.py                                  # DDPM on the embedded digits, then samples
    python launch.py --config=configs/ddpm/cifar10.py:bf16 --workdir=runs/c10 --mode=train
    python launch.py --config=... --config.training.num_steps=10 --mode=info|sample|eval
    python launch.py --config=... --workdir=W --mode=posthoc_ema --config.ema.sigma_rel=0.085
    python launch.py --config=configs/text/shapes_edm.py --mode=sample --prompt="a red circle on the left"
    python launch.py --experiment=experiments/NAME.py[:arg] --workdir=DIR [--parallel=N] [--dry_run]
    python launch.py --experiment=experiments/NAME.py[:arg] --workdir=DIR --emit=slurm  # job arrays
    python launch.py --report=DIR | --status=DIR      # rebuild a sweep's results / print its state

With `--experiment`, `--config.KEY=VALUE` arguments are added to every member's commands (e.g.
a data directory). Config and experiment errors (unknown keys, bad values, unknown names, bad
experiment files) print one line and exit with status 2.
"""
import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "ddpm", "digits.py")
SWEEP_FLAGS = ("--experiment", "--report", "--status")
MEMBER_OVERRIDES = []  # a sweep command's --config.KEY=VALUE arguments, for every member

FLAGS = flags.FLAGS


def fail(message: str, exit_code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def _check_override_keys(argv):
    """Every --config.a.b=value must name an existing key: say which and list its siblings."""
    from diffusion_jax.config_files import check_key, load_config
    from diffusion_jax.errors import ConfigError

    spec = DEFAULT_CONFIG
    for arg in argv[1:]:
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
    try:
        config = load_config(spec)
        for arg in argv[1:]:
            if arg.startswith("--config."):
                check_key(config, arg[len("--config."):].split("=", 1)[0])
    except ConfigError as e:
        fail(str(e))


def _is_sweep_command(argv) -> bool:
    return any(arg.split("=", 1)[0] in SWEEP_FLAGS for arg in argv[1:])


def define_flags(argv):
    """Check the overrides, then define the flags (config_flags reads argv when defined). A
    sweep command (`--experiment`, `--report`, `--status`) defines no config flag: its
    `--config.KEY=VALUE` arguments go to the members (`parse_flags`)."""
    sys.path.insert(0, ROOT)
    flags.DEFINE_string("workdir", "workdir", "directory for config, metrics, checkpoints, "
                        "samples; with --experiment the experiment directory (default "
                        "runs/NAME[_ARG])")
    flags.DEFINE_string("train_workdir", "", "sample and eval modes: restore the newest "
                        "checkpoint of this work directory instead of --workdir's")
    flags.DEFINE_string("experiment", None, "experiments/NAME.py[:arg]: run its sweep (or "
                        "scripted study) in --workdir")
    flags.DEFINE_string("report", None, "rebuild results.md, results.csv and plots/ of this "
                        "experiment directory")
    flags.DEFINE_string("status", None, "print the members' states of this experiment directory")
    flags.DEFINE_bool("dry_run", False, "with --experiment: list the members and their commands")
    flags.DEFINE_integer("parallel", 1, "with --experiment: members run at once (each on its "
                         "slice of the local GPUs)")
    flags.DEFINE_enum("emit", "", ["", "slurm"], "with --experiment: write scheduler scripts "
                      "that run the members (DIR/slurm/submit.sh) instead of running them")
    flags.DEFINE_string("slurm_options", "", "with --emit=slurm: #SBATCH options of every array "
                        "task, e.g. '--gres=gpu:1 --time=24:00:00'")
    flags.DEFINE_string("job", "", "with --experiment: run this one job (train/NAME or "
                        "members/NAME, as --dry_run lists them): a scheduler's array task")
    if _is_sweep_command(argv):
        return
    _check_override_keys(argv)
    try:
        config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "config file[:argument]",
                                        lock_config=True)
    except Exception as e:  # a value that does not parse for its key's type
        fail(str(e).strip().splitlines()[-1])
    flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "info", "encode_latents",
                                         "reflow_pairs", "posthoc_ema"],
                      "what to run (encode_latents: write latent.cache_dir ahead of training; "
                      "reflow_pairs: a flow run's (sample, noise) pairs in flow.coupling_dir; "
                      "posthoc_ema: reconstruct ema.sigma_rel from the snapshots of "
                      "--train_workdir, default --workdir, into WORKDIR/posthoc_ema/)")
    flags.DEFINE_string("prompt", "", "sample mode, text-conditional model: the caption to draw")
    flags.DEFINE_string("negative_prompt", "", "sample mode: the caption to guide away from")


def parse_flags(argv):
    """Parse the flags; a sweep command's `--config.*` arguments are kept for its members."""
    if _is_sweep_command(argv):
        if any(arg.startswith("--config=") for arg in argv[1:]):
            fail("--config= does not apply to --experiment: the experiment names its configs")
        MEMBER_OVERRIDES.extend(arg for arg in argv[1:] if arg.startswith("--config."))
        argv = [arg for arg in argv if not arg.startswith("--config.")]
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def sweep_main() -> int:
    """`--experiment`, `--report` or `--status`."""
    from diffusion_jax.sweep import Experiment, load_experiment

    if FLAGS.report:
        from diffusion_jax.sweep.report import write_report

        print(f"wrote {write_report(FLAGS.report)}")
        return 0
    if FLAGS.status:
        from diffusion_jax.sweep.status import read_status, status_table

        print(status_table(read_status(FLAGS.status)))
        return 0
    experiment = load_experiment(FLAGS.experiment)
    workdir = FLAGS.workdir
    if not FLAGS["workdir"].present:
        path, _, arg = FLAGS.experiment.partition(":")
        workdir = os.path.join("runs", os.path.splitext(os.path.basename(path))[0]
                               + (f"_{arg}" if arg else ""))
    if not isinstance(experiment, Experiment):  # a scripted study
        if FLAGS.dry_run:
            print(f"scripted study: would run {FLAGS.experiment} in {workdir}")
            return 0
        if MEMBER_OVERRIDES:
            fail("--config.KEY=VALUE does not apply to a scripted study")
        return experiment(workdir)
    from diffusion_jax.sweep import runner

    if FLAGS.dry_run:
        return runner.dry_run(experiment, workdir, MEMBER_OVERRIDES)
    if FLAGS.job:
        return runner.run_job(experiment, workdir, FLAGS.job, extra_args=MEMBER_OVERRIDES,
                              title=FLAGS.experiment)
    if FLAGS.emit == "slurm":
        from diffusion_jax.sweep import slurm

        directory, jobs = runner.prepare(experiment, workdir, MEMBER_OVERRIDES, FLAGS.experiment)
        path = slurm.write_scripts(FLAGS.experiment, directory, jobs, MEMBER_OVERRIDES,
                                   shlex.split(FLAGS.slurm_options))
        print(f"wrote {path}: submit with bash {path}")
        return 0
    return runner.run_experiment(experiment, workdir, parallel=FLAGS.parallel,
                                 extra_args=MEMBER_OVERRIDES, title=FLAGS.experiment)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.ERROR)
    from diffusion_jax.errors import UserError

    try:
        if _is_sweep_command(sys.argv):
            return sweep_main()
        from diffusion_jax.launcher import run

        return run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.train_workdir or None,
                   prompt=FLAGS.prompt, negative_prompt=FLAGS.negative_prompt)
    except UserError as e:
        fail(str(e), e.exit_code)
    except FileNotFoundError as e:
        fail(str(e))


if __name__ == "__main__":
    define_flags(sys.argv)
    app.run(main, flags_parser=parse_flags)
