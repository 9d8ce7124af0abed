"""Experiment sweeps: members and their names, launch.py --experiment end to end (skip, resume,
failures, reproducibility), the results table and plots, and the paper experiments."""
import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

from diffusion_jax.errors import ConfigError
from diffusion_jax.sweep import Experiment, load_experiment, member_name, parse_name
from diffusion_jax.sweep import report, runner, spec, status

LAUNCH = [sys.executable, os.path.join(ROOT, "launch.py")]
# one CPU device in the members' processes: the sweep machinery, not sharding, is under test
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
DIGITS = "configs/ddpm/digits.py"
TINY = {"model.ch": 8, "model.ch_mult": (1,), "model.num_res_blocks": 1,
        "model.attn_resolutions": (), "diffusion.num_timesteps": 100, "training.num_steps": 4,
        "training.batch_size": 16, "training.checkpoint_every": 2, "training.log_every": 2,
        "training.sample_at_end": False, "optim.warmup_steps": 0, "sampling.num_samples": 8,
        "sampling.batch_size": 8, "sampling.num_steps": 5, "eval.num_samples": 16,
        "eval.batch_size": 8, "eval.num_reference": 64}
METRICS = ("loss", "digits_frechet_distance")
TWO_AXES = Experiment(config=DIGITS, overrides=TINY, grid={"sampling.method": ["ddim", "heun"]},
                      seeds=(0, 1), modes=("train", "eval"), metrics=METRICS,
                      description="Two axes on a tiny digits DDPM.")
WITH_A_FAILING_SAMPLER = dataclasses.replace(TWO_AXES,
                                             grid={"sampling.method": ["ddim", "heun", "nope"]})
PAPER = ("ddpm_cifar10", "score_sde_cifar10", "edm_cifar10", "consistency_cifar10")


def launch(*args, timeout=600):
    return subprocess.run(LAUNCH + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=ENV)


def write_experiment(path, experiment: Experiment) -> str:
    """An experiment file whose get_experiment returns `experiment`."""
    path.write_text("from diffusion_jax.sweep import Experiment\n\n\n"
                    "def get_experiment(arg=None):\n"
                    f"    return Experiment(**{experiment.to_json()!r})\n")
    return str(path)


def results(directory) -> dict:
    """results.csv as {member name: row}."""
    with open(os.path.join(directory, "results.csv")) as f:
        return {row["member"]: row for row in csv.DictReader(f)}


def one_line_error(result, *fragments):
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and all(f in lines[0] for f in fragments), lines[0]


# --- members and names -------------------------------------------------------------------

def test_members_are_grid_times_zipped_times_seeds():
    experiment = Experiment(config=DIGITS, grid={"model.ch": [8, 16], "optim.lr": [1e-3, 2e-3]},
                            zipped={"sampling.method": ["ddim", "heun"],
                                    "sampling.num_steps": [10, 5]}, seeds=(0, 1, 2))
    members = experiment.members()
    assert len(members) == 2 * 2 * 2 * 3
    assert members[0] == {"model.ch": 8, "optim.lr": 1e-3, "sampling.method": "ddim",
                          "sampling.num_steps": 10, "training.seed": 0}
    assert {(m["sampling.method"], m["sampling.num_steps"]) for m in members} == {
        ("ddim", 10), ("heun", 5)}
    assert len({member_name(m) for m in members}) == len(members)


def test_zipped_axes_of_unequal_lengths_are_an_error():
    experiment = Experiment(config=DIGITS, zipped={"sampling.method": ["ddim", "heun"],
                                                   "sampling.num_steps": [10]})
    with pytest.raises(ConfigError, match="equal lengths"):
        experiment.members()


@pytest.mark.parametrize("value", [
    0.001, 1e-05, -2.5, 3.0, float("inf"), 7, -1, True, False, (1, 2), (1,), (), (0.5, True),
    "heun", "dpm_solver_pp_2m", "configs/x y.py", "True", "12", "1e-3", "(1,)", "a,b=c;d", "",
    "'quoted'", "50%"])
def test_member_names_parse_back_to_the_same_values(value):
    values = {"some.key": value, "sampling.method": "heun", "training.seed": 3}
    name = member_name(values)
    assert "/" not in name and len(name.split(",")) == 3
    parsed = parse_name(name)
    assert parsed == values and [type(v) for v in parsed.values()] == [type(v) for v in
                                                                       values.values()]


def test_a_config_axis_is_named_by_the_file_and_parsed_back_to_its_path():
    experiment = Experiment(config="configs/score_sde/digits_vp.py",
                            grid={"config": ["configs/score_sde/digits_vp.py",
                                             "configs/score_sde/digits_ve.py"]})
    values = experiment.members()[1]
    assert member_name(values) == "config=digits_ve"
    assert experiment.member_named("config=digits_ve") == values


def test_names_parse_back_to_the_same_config():
    experiment = Experiment(config=DIGITS, overrides={"training.num_steps": 4},
                            grid={"model.ch_mult": [(1,), (1, 2)], "optim.lr": [5e-4],
                                  "data.random_flip": [True, False]},
                            zipped={"sampling.method": ["ddim"], "sampling.spacing": ["quad"]})
    for values in experiment.validate():
        parsed = experiment.member_named(member_name(values))
        assert experiment.resolve(parsed) == experiment.resolve(values)
    assert experiment.resolve(values).model.ch_mult == (1, 2)


def test_members_that_differ_in_sampling_or_eval_keys_share_a_training_run():
    experiment = Experiment(config=DIGITS, grid={"sampling.method": ["ddim", "heun"],
                                                 "eval.num_samples": [8, 16]}, seeds=(0, 1))
    trainings = {spec.training_name(m) for m in experiment.members()}
    assert trainings == {"training.seed=0", "training.seed=1"}


@pytest.mark.parametrize("experiment,fragment", [
    (Experiment(config=DIGITS, grid={"training.nope": [1]}), "training.nope"),
    (Experiment(config=DIGITS, grid={"training.num_steps": ["ten"]}), "num_steps"),
    (Experiment(config=DIGITS, modes=("eval", "train")), "modes"),
    (Experiment(config=DIGITS, overrides={"optim.lr": 1.0}, grid={"optim.lr": [2.0]}),
     "optim.lr"),
    (Experiment(config=DIGITS, published={"sampling.method=nope": "FID 1"}), "matches no"),
])
def test_a_bad_experiment_is_a_config_error_before_anything_runs(experiment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        experiment.validate()


# --- launch.py --experiment end to end -----------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The two-axis sweep (sampling.method x seed: 2 training runs, 4 evaluations) run once."""
    base = tmp_path_factory.mktemp("sweep")
    file = write_experiment(base / "two_axes.py", TWO_AXES)
    result = launch(f"--experiment={file}", f"--workdir={base / 'run'}", "--parallel=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base / "run"


def test_dry_run_lists_members_and_commands_without_running(tmp_path):
    out = io.StringIO()
    assert runner.dry_run(TWO_AXES, str(tmp_path / "run"), out=out) == 0
    text = out.getvalue()
    assert not (tmp_path / "run").exists()
    assert text.count("--mode=train") == 2 and text.count("--mode=eval") == 4
    assert "# members/sampling.method=heun,training.seed=1" in text
    assert "--config.sampling.method=heun --config.training.seed=1" in text
    assert f"--train_workdir={tmp_path / 'run' / 'train' / 'training.seed=1'}" in text


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_sweep_writes_the_table_and_the_plots(sweep):
    rows = results(sweep)
    assert sorted(rows) == sorted(member_name(m) for m in TWO_AXES.members())
    for row in rows.values():
        assert row["status"] == "done" and float(row["digits_frechet_distance"]) > 0
        assert float(row["loss"]) > 0
    table = (sweep / "results.md").read_text()
    assert "| sampling.method | training.seed | status | loss | digits_frechet_distance |" in table
    assert "4 of 4 members done." in table
    plots = sorted(os.listdir(sweep / "plots"))
    assert plots == sorted(f"{m}_vs_{a}.png" for m in METRICS
                           for a in ("sampling.method", "training.seed")) + ["training_curves.png"]
    state = json.loads((sweep / "status.json").read_text())
    assert state["counts"] == {"done": 4, "running": 0, "failed": 0, "pending": 0}


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_every_run_records_config_commit_versions_devices_and_seed(sweep):
    for name in ("train/training.seed=1", "members/sampling.method=heun,training.seed=1"):
        run = json.loads((sweep / name / "run.json").read_text())
        assert run["seed"] == 1 and run["git_commit"] and isinstance(run["git_dirty"], bool)
        assert run["jax"] and run["flax"] and run["devices"]
        assert json.loads((sweep / name / "config.json").read_text())["training"]["seed"] == 1


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_member_configs_equal_the_configs_parsed_from_their_names(sweep):
    for name in os.listdir(sweep / "members"):
        written = json.loads((sweep / "members" / name / "config.json").read_text())
        parsed = TWO_AXES.resolve(TWO_AXES.member_named(name))
        assert written == json.loads(parsed.to_json_best_effort(sort_keys=True))


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_members_sharing_a_training_run_keep_their_own_evaluations(sweep):
    ddim, heun = (json.loads((sweep / "members" / f"sampling.method={method},training.seed=0" /
                              "done.json").read_text()) for method in ("ddim", "heun"))
    assert ddim["metrics"]["loss"] == heun["metrics"]["loss"]  # one training run
    assert ddim["metrics"]["digits_frechet_distance"] != heun["metrics"]["digits_frechet_distance"]
    assert sorted(os.listdir(sweep / "train")) == ["training.seed=0", "training.seed=1"]


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_different_seeds_give_different_metrics(sweep):
    rows = results(sweep)
    for method in ("ddim", "heun"):
        seed0 = rows[f"sampling.method={method},training.seed=0"]
        seed1 = rows[f"sampling.method={method},training.seed=1"]
        assert seed0["loss"] != seed1["loss"]
        assert seed0["digits_frechet_distance"] != seed1["digits_frechet_distance"]


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_a_rerun_of_a_finished_sweep_runs_nothing(sweep):
    done = {n: os.path.getmtime(sweep / "members" / n / "done.json")
            for n in os.listdir(sweep / "members")}
    out = io.StringIO()
    assert runner.run_experiment(TWO_AXES, str(sweep), out=out) == 0
    assert "running" not in out.getvalue()
    assert done == {n: os.path.getmtime(sweep / "members" / n / "done.json") for n in done}


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_report_rebuilt_from_the_directories_equals_the_original(sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    original = {f: (copy / f).read_bytes() for f in ("results.md", "results.csv")}
    plots = {f: (copy / "plots" / f).read_bytes() for f in os.listdir(copy / "plots")}
    for f in original:
        os.remove(copy / f)
    shutil.rmtree(copy / "plots")
    result = launch(f"--report={copy}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert original == {f: (copy / f).read_bytes() for f in original}
    assert plots == {f: (copy / "plots" / f).read_bytes() for f in os.listdir(copy / "plots")}


@pytest.fixture(scope="module")
def rerun(sweep, tmp_path_factory):
    """A copy of the sweep where seed 1's training was interrupted after its step-2 checkpoint
    (and its ddim member not evaluated) and seed 0's training never happened (its ddim member
    not evaluated either), run again with a third sampler, `nope`, that does not exist."""
    copy = tmp_path_factory.mktemp("rerun") / "run"
    shutil.copytree(sweep, copy)
    interrupted = copy / "train" / "training.seed=1"
    os.remove(interrupted / "done.json")
    shutil.rmtree(interrupted / "checkpoints" / "4")
    shutil.rmtree(copy / "train" / "training.seed=0")
    for seed in (0, 1):
        member = copy / "members" / f"sampling.method=ddim,training.seed={seed}"
        os.remove(member / "done.json")
        shutil.rmtree(member / "eval")
    kept = {n: os.path.getmtime(copy / "members" / n / "done.json")
            for n in os.listdir(copy / "members") if "heun" in n}
    out = io.StringIO()
    env = os.environ.copy()
    os.environ.update(ENV)
    try:
        assert runner.run_experiment(WITH_A_FAILING_SAMPLER, str(copy), parallel=2, out=out) == 1
    finally:
        os.environ.clear()
        os.environ.update(env)
    return copy, kept, out.getvalue()


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_a_rerun_skips_finished_members(rerun):
    copy, kept, out = rerun
    assert kept == {n: os.path.getmtime(copy / "members" / n / "done.json") for n in kept}
    assert "method=heun" not in out  # the heun members never ran
    assert out.count("running (eval)") == 4  # ddim and nope, seeds 0 and 1


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_an_interrupted_member_resumes_from_its_checkpoint(rerun, sweep):
    copy, _, _ = rerun
    log = (copy / "train" / "training.seed=1" / "logs" / "train.err").read_text()
    assert "train 4/4" in log and "train 2/4" not in log  # trained steps 3..4 only
    name = "sampling.method=ddim,training.seed=1"
    assert results(copy)[name]["loss"] == results(sweep)[name]["loss"]
    assert (results(copy)[name]["digits_frechet_distance"]
            == results(sweep)[name]["digits_frechet_distance"])


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_the_same_config_and_seed_give_identical_metrics(rerun, sweep):
    copy, _, _ = rerun
    name = "sampling.method=ddim,training.seed=0"  # trained and evaluated again from scratch
    assert "train 2/4" in (copy / "train" / "training.seed=0" / "logs" / "train.err").read_text()
    for metric in METRICS:
        assert results(copy)[name][metric] == results(sweep)[name][metric]


@pytest.mark.slow  # the sweep fixture trains two runs in subprocesses (about 1.5 min of CPU)
def test_a_failing_member_is_marked_failed_while_the_others_finish(rerun):
    copy, _, _ = rerun
    rows = results(copy)
    for seed in (0, 1):
        assert rows[f"sampling.method=ddim,training.seed={seed}"]["status"] == "done"
        failed = rows[f"sampling.method=nope,training.seed={seed}"]
        assert failed["status"] == "failed" and failed["error"].startswith("eval: error: ")
        assert "'nope'" in failed["error"] and failed["digits_frechet_distance"] == ""
        assert f"failed: {failed['error']}" in (copy / "results.md").read_text()
    table = status.status_table(status.read_status(str(copy)))
    assert table.startswith("4 done, 0 running, 2 failed, 0 pending")
    assert "| sampling.method=nope,training.seed=1 | failed | eval: error: " in table


def test_a_scripted_study_is_its_run_function():
    study = load_experiment("experiments/sampler_nfe.py:quick")
    assert study.func.__name__ == "run" and study.keywords == {"arg": "quick"}
    with pytest.raises(ConfigError, match="huge"):
        load_experiment("experiments/sampler_nfe.py:huge")(".")


def test_extra_arguments_must_name_keys_the_experiment_does_not_set():
    runner.check_extra_args(TWO_AXES, ["--config.data.data_dir=/data"])
    with pytest.raises(ConfigError, match="training.nope"):
        runner.check_extra_args(TWO_AXES, ["--config.training.nope=1"])
    with pytest.raises(ConfigError, match="set by the experiment"):
        runner.check_extra_args(TWO_AXES, ["--config.training.seed=3"])


def test_a_directory_of_an_experiment_with_other_fixed_overrides_is_refused(tmp_path):
    other = dataclasses.replace(TWO_AXES, overrides={**TINY, "training.num_steps": 8})
    (tmp_path / "experiment.json").write_text(json.dumps(
        dict(title="other", experiment=other.to_json(), extra_args=[], members=[])))
    with pytest.raises(ConfigError, match="another overrides"):
        runner.run_experiment(TWO_AXES, str(tmp_path), out=io.StringIO())
    assert os.listdir(tmp_path) == ["experiment.json"]


@pytest.mark.parametrize("args,fragments", [
    (["--experiment=experiments/nope.py"], ["nope.py", "does not exist"]),
    (["--experiment=experiments/edm_cifar10.py:huge"], ["huge", "digits"]),
])
def test_a_bad_experiment_is_a_one_line_error(tmp_path, args, fragments):
    result = launch(*args, f"--workdir={tmp_path / 'run'}")
    one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_an_unknown_axis_key_is_a_one_line_error(tmp_path):
    file = write_experiment(tmp_path / "bad.py",
                            Experiment(config=DIGITS, grid={"model.chanels": [8, 16]}))
    one_line_error(launch(f"--experiment={file}", f"--workdir={tmp_path / 'run'}"),
                   "model.chanels", "num_res_blocks")


# --- paper experiments ---------------------------------------------------------------------

@pytest.mark.parametrize("name", PAPER)
def test_paper_experiments_expand_with_the_published_numbers(name):
    cifar10, digits = (load_experiment(f"experiments/{name}.py{arg}") for arg in ("", ":digits"))
    for experiment in (cifar10, digits):
        members = experiment.validate()
        assert all(experiment.published_for(m).startswith("CIFAR-10: ") for m in members)
    assert all("cifar10" in path for path in cifar10.config_files())
    assert all("digits" in path for path in digits.config_files())
    assert "fid" in cifar10.metrics and "digits_frechet_distance" in digits.metrics
    assert len(digits.members()) == len(cifar10.members())
    assert load_experiment(f"experiments/{name}.py:quick") == digits


def test_the_ddpm_table_has_the_papers_rows():
    experiment = load_experiment("experiments/ddpm_cifar10.py")
    published = {(m["sampling.method"], m["sampling.num_steps"]): experiment.published_for(m)
                 for m in experiment.members()}
    assert published == {("ancestral", 1000): "CIFAR-10: FID 3.17, IS 9.46, NLL <= 3.75 bits/dim",
                         ("ddim", 10): "CIFAR-10: FID 13.36", ("ddim", 20): "CIFAR-10: FID 6.84",
                         ("ddim", 50): "CIFAR-10: FID 4.67", ("ddim", 100): "CIFAR-10: FID 4.16"}
    # the NLL (variational bound) once, on the whole test set: it does not depend on the sampler
    assert {(m["sampling.method"], m["eval.bpd_num_examples"]) for m in experiment.members()} == {
        ("ancestral", 10_000), ("ddim", 0)}
    assert "bits_per_dim" in experiment.metrics


@pytest.mark.slow
def test_the_edm_digits_experiment_runs_end_to_end(tmp_path):
    result = launch("--experiment=experiments/edm_cifar10.py:digits",
                    f"--workdir={tmp_path / 'edm'}", "--parallel=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = results(tmp_path / "edm")
    assert [r["published"] for r in rows.values()] == ["CIFAR-10: FID 1.97 (35 NFE)",
                                                       "CIFAR-10: FID 1.79 (35 NFE)"]
    for row in rows.values():
        assert row["status"] == "done" and float(row["digits_frechet_distance"]) > 0
        assert float(row["digits_classifier_score"]) >= 1
    assert report.DIGITS_NOTE in (tmp_path / "edm" / "results.md").read_text()


def test_the_sde_sampler_ablation_expands_over_predictors_correctors_and_the_ode():
    """experiments/sde_samplers.py (issue: score SDEs): every SDE x every sampler, one training
    run per SDE."""
    full, quick = (load_experiment(f"experiments/sde_samplers.py{arg}") for arg in ("", ":quick"))
    members = full.validate()
    assert len(members) == 3 * 9 and len({spec.training_name(m) for m in members}) == 3
    samplers = {(m["sampling.method"], m["sampling.predictor"], m["sampling.corrector"])
                for m in members}
    assert ("pc", "reverse_diffusion", "langevin") in samplers and (
        "ode", "euler_maruyama", "none") in samplers
    assert {"digits_frechet_distance", "nfe"} <= set(full.metrics)
    assert len(quick.validate()) == 3
