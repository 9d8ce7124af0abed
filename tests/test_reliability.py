"""What clusters do to runs, done on purpose: a second run in a busy work directory, a corrupt
newest checkpoint, a kill mid-write of the metrics, a resume off a log step, a diverging loss,
SIGTERM between log steps, kill -9, and user mistakes that must fail before anything is written.
Each check is paired with the run that would pass it wrongly (a comment says which)."""
import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import builders, workdir as workdir_io
from diffusion_jax.errors import CheckpointError, TrainingDiverged
from diffusion_jax.launcher import train
from diffusion_jax.training import loop
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import ema_schedule
from helpers import ROOT, TINY_OVERRIDES, tiny_ddpm_config

LAUNCH = [sys.executable, os.path.join(ROOT, "launch.py")]
STEPS, LOG, CKPT = 20, 5, 7  # checkpoints at 7, 14, 20: two of them off the log steps


def launch(*args, timeout=300):
    return subprocess.run(LAUNCH + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def tiny_args(workdir, *extra):
    return [f"--workdir={workdir}", *TINY_OVERRIDES, f"--config.training.num_steps={STEPS}",
            "--config.training.batch_size=32", f"--config.training.log_every={LOG}",
            f"--config.training.checkpoint_every={CKPT}", "--config.training.sample_at_end=False",
            "--config.diffusion.num_timesteps=100", *extra]


def one_line_error(result, code=2):
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert result.returncode == code, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def config():
    return tiny_ddpm_config(num_steps=STEPS, log_every=LOG, checkpoint_every=CKPT)


def losses(workdir):
    return [(m["step"], m["loss"]) for m in workdir_io.read_metrics(str(workdir))]


def assert_same_rows(a, b):
    assert [s for s, _ in a] == [s for s, _ in b]
    np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=1e-5)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: its rows and final weights are what every resumed run must equal."""
    workdir = tmp_path_factory.mktemp("straight")
    state, _ = train(config(), str(workdir))
    return workdir, state


def copy_until(straight, tmp_path, keep_steps):
    """The straight run's directory as a run killed after checkpoint max(keep_steps) left it."""
    workdir = tmp_path / "run"
    shutil.copytree(straight[0], workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if int(name) not in keep_steps:
            shutil.rmtree(workdir / "checkpoints" / name)
    return workdir


def assert_resumed_equals_straight(workdir, straight):
    state, _ = train(config(), str(workdir))
    assert_same_rows(losses(workdir), losses(straight[0]))
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(straight[1].params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


# --- lost or corrupted work -----------------------------------------------------------------

@pytest.mark.slow
def test_resume_off_a_log_step_after_a_kill_mid_write_logs_the_uninterrupted_rows(straight,
                                                                                  tmp_path):
    # killed at step 12: checkpoint 7 (between log steps 5 and 10), row 10 written, row 15 cut
    # off mid-write. Without the pending metrics in the checkpoint, row 10 would average steps
    # 8-10 only and differ; without dropping the partial line the resume would not start.
    workdir = copy_until(straight, tmp_path, {7})
    rows = open(workdir / "metrics.jsonl").read().splitlines()
    with open(workdir / "metrics.jsonl", "w") as f:
        f.write("\n".join(rows[:2]) + "\n" + rows[2][: len(rows[2]) // 2])
    assert [s for s, _ in losses(workdir)] == [5, 10]  # the partial line is not a row
    assert_resumed_equals_straight(workdir, straight)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated_array_file", "garbled_metadata"])
def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(
        straight, tmp_path, capfd, damage):
    workdir = copy_until(straight, tmp_path, {7, 14, 20})
    state_dir = workdir / "checkpoints" / "20"
    files = [os.path.join(r, n) for r, _, names in os.walk(state_dir) for n in names]
    if damage == "truncated_array_file":
        victim = max(files, key=os.path.getsize)
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    else:
        for path in files:
            name = os.path.basename(path)
            if "manifest" in name or name.startswith("_METADATA") or name == "_CHECKPOINT_METADATA":
                open(path, "w").write("garbage")
    capfd.readouterr()
    assert_resumed_equals_straight(workdir, straight)  # retrained 15..20 from checkpoint 14
    warnings = [l for l in capfd.readouterr().err.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint 20 is unreadable" in warnings[0], warnings
    assert "restored checkpoint 14" in warnings[0]
    # kept aside, not deleted; a fresh checkpoint 20 was written by the resumed run
    assert sorted(os.listdir(workdir / "checkpoints")) == ["14", "20", "20.corrupt", "7"]


@pytest.mark.slow
def test_a_checkpoint_of_another_network_is_a_one_line_error_not_a_fallback(straight, tmp_path):
    # a config mistake (a wider U-Net than the checkpoint's) must not be mistaken for damage:
    # falling back would set every checkpoint aside and train from scratch
    workdir = copy_until(straight, tmp_path, {7, 14, 20})
    wider = config()
    wider.model.ch = 32
    with pytest.raises(CheckpointError):
        train(wider, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["14", "20", "7"]


@dataclasses.dataclass(frozen=True)
class DivergesAt:
    """A method whose loss becomes NaN from step `at` on (a stand-in for a blown-up run)."""

    method: object
    at: int

    def __getattr__(self, name):
        return getattr(self.method, name)

    def loss(self, params, batch, rng, aux=None, step=None):
        loss, metrics = self.method.loss(params, batch, rng, aux=aux, step=step)
        return jnp.where(step >= self.at, jnp.nan, loss), metrics


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    c = config()
    method = DivergesAt(builders.build_method(c), at=12)  # the 13th step: after checkpoint 7
    mesh = builders.build_mesh(c)
    with pytest.raises(TrainingDiverged, match="at step 13.*last checkpoint, step 7"):
        train(c, str(tmp_path), mesh, method)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["7"]  # 14 would hold NaN weights
    state = loop.restore_state(method, make_optimizer(c.optim), str(tmp_path), mesh)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    assert all(np.isfinite(l) for _, l in losses(tmp_path))  # row 10 is finite, no row 15


# --- the work directory lock ----------------------------------------------------------------

def test_a_second_run_in_a_busy_work_directory_is_refused_naming_the_holder(tmp_path):
    os.makedirs(tmp_path / "run")
    with workdir_io.WorkdirLock(str(tmp_path / "run"), "train"):
        line = one_line_error(launch(*tiny_args(tmp_path / "run")))
        assert f"pid {os.getpid()}" in line and "in use by another run" in line
        assert os.listdir(tmp_path / "run") == [".lock"]  # no config, metrics or checkpoints
    # released on exit: the same lock is free again (a leftover .lock file is not a holder)
    with workdir_io.WorkdirLock(str(tmp_path / "run"), "train"):
        pass


def test_without_flock_a_lock_of_a_dead_pid_is_stale_and_a_live_one_holds(tmp_path,
                                                                          monkeypatch):
    def no_flock(*args):
        raise OSError(errno.ENOLCK, "no locks on this file system")

    monkeypatch.setattr(workdir_io.fcntl, "flock", no_flock)
    lock_file = tmp_path / ".lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_file.write_text(f"host {workdir_io.socket.gethostname()}, pid {dead.pid}, mode train\n")
    with workdir_io.WorkdirLock(str(tmp_path), "train"):  # stale: taken over
        assert f"pid {os.getpid()}" in lock_file.read_text()
    live = subprocess.Popen(["sleep", "30"])
    try:
        lock_file.write_text(f"host {workdir_io.socket.gethostname()}, pid {live.pid}, "
                             f"mode train\n")
        with pytest.raises(workdir_io.WorkdirBusy, match=f"pid {live.pid}"):
            with workdir_io.WorkdirLock(str(tmp_path), "train"):
                pass
    finally:
        live.kill()


# --- user mistakes fail first, in one line, and write nothing -------------------------------

@pytest.mark.parametrize("extra, fragment", [
    (["--config.optim.lr=nan"], "optim.lr must be a finite number"),
    (["--config.training.batch_size=100000"], "larger than the"),
    (["--config.sampling.num_samples=0"], "sampling.num_samples must be >= 1"),
    (["--config.training.log_every=0"], "training.log_every must be >= 1"),
    (["--config.model.name=nope"], "unknown model (model.name) 'nope'"),
    (["--config.method=nope"], "unknown method 'nope'"),
    (["--config.sampling.method=nope"], "unknown sampler (sampling.method) 'nope'"),
    (["--config.data.dataset=nope"], "unknown data set (data.dataset) 'nope'"),
    (["--config.training.ema_warmup=linear"], "unknown training.ema_warmup"),
    (["--config.logging.wandb_project=x"], "wandb is not installed"),
    (["--mode=sample"], "no checkpoint in"),
])
def test_each_mistake_is_one_line_exit_2_and_no_files(tmp_path, extra, fragment):
    if "wandb" in fragment and __import__("importlib").util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    workdir = tmp_path / "new" / "run"
    assert fragment in one_line_error(launch(*tiny_args(workdir, *extra)))
    assert not os.path.exists(workdir)


def test_a_work_directory_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    assert "is a file" in one_line_error(launch(*tiny_args(tmp_path / "file")))


# --- what a run shows -----------------------------------------------------------------------

def test_power_ema_warmup_follows_its_formula_and_tracks_a_short_run():
    power, none = ema_schedule(0.9999, "power"), ema_schedule(0.9999, "none")
    for k in (0, 1, 10, 1000, 10**6):
        assert float(power(k)) == pytest.approx(min(0.9999, (1 + k) / (10 + k)), rel=1e-6)
    # EMA of a weight that moves from 0 to 1 over 200 steps: the warm-up ends near the trained
    # value; the plain 0.9999 EMA (the control) stays within 2% of the initial one
    def ema_after(schedule, n=200):
        ema, w = 0.0, 0.0
        for k in range(n):
            w = (k + 1) / n
            beta = float(schedule(k))
            ema = beta * ema + (1 - beta) * w
        return ema
    assert ema_after(power) > 0.9 and ema_after(none) < 0.02


def distance(a, b):
    return float(np.sqrt(sum(np.sum((np.asarray(x) - np.asarray(y)) ** 2)
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


@pytest.mark.slow
def test_a_short_runs_ema_is_closer_to_its_trained_weights_than_to_the_initial_ones(straight,
                                                                                    tmp_path):
    c = config()
    method, mesh = builders.build_method(c), builders.build_mesh(c)
    init = loop.initial_state(method, make_optimizer(c.optim), c.training.seed, mesh).params
    warm = straight[1]  # 20 steps with the digits config's power warm-up
    assert distance(warm.ema_params, warm.params) < distance(warm.ema_params, init)
    # control: the constant decay 0.995 from step 0 (the old default) keeps 0.995^20 = 90% of
    # the initial weights in the EMA, and the same check rejects it
    c.training.ema_warmup = "none"
    cold, _ = train(c, str(tmp_path))
    assert distance(cold.ema_params, cold.params) > distance(cold.ema_params, init)


@pytest.mark.slow
def test_training_writes_a_loss_plot_tensorboard_events_and_preview_grids(tmp_path):
    result = launch(*tiny_args(tmp_path, "--config.training.num_steps=14",
                               "--config.training.preview_samples=4",
                               "--config.sampling.num_steps=10", "--config.sampling.method=ddim"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.getsize(tmp_path / "plots" / "loss.png") > 1000
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))
    assert {"step_7.png", "step_14.png"} <= set(os.listdir(tmp_path / "samples"))
    samples = np.load(tmp_path / "samples" / "step_14.npz")
    assert samples["images"].shape == (4, 8, 8, 1)
    assert samples["images"].min() >= -1 and samples["images"].max() <= 1  # clipped to pixels
    # progress with a rate and time left on stderr (not a tty: one line per log step)
    assert "step/s" in result.stderr and "left" in result.stderr


# --- killed processes (slow: several launcher processes) ------------------------------------

def wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_twice_and_resume_log_the_rows_of_an_uninterrupted_run(tmp_path):
    args = ["--config.training.num_steps=60", "--config.training.checkpoint_every=1"]
    assert launch(*tiny_args(tmp_path / "straight", *args)).returncode == 0
    killed = tmp_path / "killed"
    for rows, delay in ((1, 0.3), (4, 1.1)):  # moments unrelated to the step boundaries
        proc = subprocess.Popen(LAUNCH + tiny_args(killed, *args), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(losses(killed)) >= rows, proc)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler runs, a checkpoint or a metrics line may be half-written
        assert proc.wait() == -signal.SIGKILL
    result = launch(*tiny_args(killed, *args))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rows(losses(killed), losses(tmp_path / "straight"))


@pytest.mark.slow
def test_sigterm_between_log_steps_checkpoints_within_a_step_and_exits_143(tmp_path):
    # log and checkpoint steps far away: a run that looked for SIGTERM only at log steps would
    # never stop here
    args = tiny_args(tmp_path, "--config.training.num_steps=100000",
                     "--config.training.log_every=100000",
                     "--config.training.checkpoint_every=100000")
    proc = subprocess.Popen(LAUNCH + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    wait_for(lambda: os.path.exists(tmp_path / "config.json"), proc)
    time.sleep(15)  # compiled and stepping
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    steps = os.listdir(tmp_path / "checkpoints")
    assert len(steps) == 1 and 0 < int(steps[0]) < 100000
    assert not os.path.exists(tmp_path / "metrics.jsonl") or not losses(tmp_path)


@pytest.mark.slow
def test_a_diverging_run_exits_1_in_one_line_from_the_launcher(tmp_path):
    result = launch(*tiny_args(tmp_path, "--config.optim.lr=1e6", "--config.optim.grad_clip=0"))
    # exit 0 with NaN checkpoints was the old failure; progress lines may come before the error
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    line = lines[-1]
    assert line.startswith("error: ") and sum(l.startswith("error:") for l in lines) == 1
    assert "training diverged" in line and "non-finite" in line
