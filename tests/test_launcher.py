"""launch.py end to end in a temp dir, its modes, and its one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, TINY_OVERRIDES

LAUNCH = [sys.executable, os.path.join(ROOT, "launch.py")]


def launch(*args, timeout=300):
    return subprocess.run(LAUNCH + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def tiny(workdir, *extra):
    return [f"--workdir={workdir}", *TINY_OVERRIDES, "--config.training.num_steps=20",
            "--config.training.batch_size=32", "--config.training.log_every=10",
            "--config.training.checkpoint_every=10", "--config.sampling.num_samples=12",
            "--config.sampling.batch_size=8", "--config.sampling.num_steps=100", *extra]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = launch(*tiny(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_train_writes_config_metrics_checkpoint_and_samples(trained):
    config = json.load(open(trained / "config.json"))
    assert config["training"]["num_steps"] == 20 and config["model"]["ch"] == 16
    metrics = [json.loads(l) for l in open(trained / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [10, 20] and all("loss" in m for m in metrics)
    assert sorted(os.listdir(trained / "checkpoints")) == ["10", "20"]
    assert os.path.exists(trained / "samples" / "step_20.png")
    samples = np.load(trained / "samples" / "step_20.npz")["images"]
    assert samples.shape == (12, 8, 8, 1) and np.isfinite(samples).all()
    run = json.load(open(trained / "run.json"))
    assert run["seed"] == 0 and "git_commit" in run and "jax" in run


def test_sample_mode_restores_the_checkpoint_and_keeps_the_training_grid(trained):
    before = (trained / "samples" / "step_20.png").read_bytes()
    result = launch(*tiny(trained, "--mode=sample", "--config.sampling.method=ddim",
                          "--config.sampling.num_steps=10", "--config.sampling.seed=7"))
    assert result.returncode == 0, result.stderr[-3000:]
    # named after the checkpoint's step and the seed; the training run's grid is not overwritten
    assert os.path.exists(trained / "samples" / "sample_20_7.png")
    assert (trained / "samples" / "step_20.png").read_bytes() == before


def test_info_prints_the_papers_parameter_count_and_flops():
    result = launch("--config=configs/ddpm/cifar10.py", "--mode=info")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "params: 35746307" in result.stdout.splitlines()
    flops = int(next(l for l in result.stdout.splitlines() if l.startswith("flops:")).split()[1])
    assert abs(flops - 12.44e9) / 12.44e9 < 0.01


@pytest.mark.parametrize("args,fragments", [
    (["--config.training.nope=1"], ["training.nope", "num_steps"]),
    (["--config.training.num_steps=abc"], ["num_steps", "abc"]),
    (["--config.model.name=resnet", "--mode=info"], ["resnet", "unet"]),
    (["--config.data.dataset=imagenet", "--mode=info"], ["imagenet", "digits"]),
    (["--config.sampling.method=nope", "--mode=info"], ["nope", "ancestral"]),
    (["--config=configs/ddpm/nope.py"], ["does not exist"]),
    (["--mode=fly"], ["fly"]),
])
def test_bad_config_is_a_one_line_error(args, fragments):
    assert_one_line_error(launch(*args), *fragments)


def test_missing_data_set_is_a_one_line_error(tmp_path):
    result = launch(f"--workdir={tmp_path / 'w'}", "--config.data.dataset=cifar10",
                    f"--config.data.data_dir={tmp_path}")
    assert_one_line_error(result, "cifar10", "tfds build")


def test_sample_without_checkpoint_is_a_one_line_error(tmp_path):
    assert_one_line_error(launch(f"--workdir={tmp_path}", "--mode=sample"), "no checkpoint")


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_in_one_line(tmp_path,
                                                                              trained):
    import shutil

    workdir = tmp_path / "corrupt"
    shutil.copytree(trained, workdir)
    for root, _, files in os.walk(workdir / "checkpoints" / "20" / "state"):
        for name in files:
            if "manifest" in name or name.startswith("_METADATA"):
                open(os.path.join(root, name), "w").write("garbage")
    result = launch(*tiny(workdir, "--mode=sample", "--config.sampling.num_samples=2"))
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [l for l in result.stderr.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint 20 is unreadable" in warnings[0]
    assert "restored checkpoint 10" in warnings[0] and "Traceback" not in result.stderr
    assert os.path.exists(workdir / "samples" / "sample_10_1.png")
    # sample mode is read-only: the bad checkpoint stays where it was
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    workdir = tmp_path / "term"
    args = tiny(workdir, "--config.training.num_steps=100000", "--config.training.log_every=5",
                "--config.training.checkpoint_every=100000")
    proc = subprocess.Popen(LAUNCH + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    deadline = time.time() + 240
    while not os.path.exists(workdir / "metrics.jsonl") and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    steps = os.listdir(workdir / "checkpoints")
    assert len(steps) == 1 and int(steps[0]) >= 5


@pytest.mark.slow
def test_eval_writes_metrics_and_resumes_without_redoing_finished_batches(trained):
    args = tiny(trained, "--mode=eval", "--config.eval.num_samples=24",
                "--config.eval.batch_size=8", "--config.sampling.method=ddim",
                "--config.sampling.num_steps=5")
    result = launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "digits_frechet_distance" in result.stdout
    directory = trained / "eval" / "step_20"
    metrics = json.load(open(directory / "metrics.json"))
    assert metrics["num_samples"] == 24 and metrics["digits_frechet_distance"] > 0
    last = np.load(directory / "batch_00002.npz")["images"]
    os.remove(directory / "batch_00002.npz")
    kept = {b: os.path.getmtime(directory / f"batch_0000{b}.npz") for b in (0, 1)}
    result = launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert kept == {b: os.path.getmtime(directory / f"batch_0000{b}.npz") for b in (0, 1)}
    np.testing.assert_allclose(np.load(directory / "batch_00002.npz")["images"], last, atol=1e-5)
    assert json.load(open(directory / "metrics.json")) == pytest.approx(metrics, rel=1e-5)
