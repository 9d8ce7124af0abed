"""The generic training loop: learning, resume, data parallelism, multi-process."""
import os
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

from diffusion_jax import builders, parallel, workdir as workdir_io
from diffusion_jax.data import digits
from diffusion_jax.launcher import train
from diffusion_jax.training.loop import initial_state
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import jit_train_step
from helpers import tiny_ddpm_config

HERE = os.path.dirname(os.path.abspath(__file__))


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


@pytest.mark.slow
def test_training_on_digits_lowers_the_loss(tmp_path):
    train(tiny_ddpm_config(num_steps=150, log_every=15, checkpoint_every=150), str(tmp_path))
    losses = [m["loss"] for m in workdir_io.read_metrics(str(tmp_path))]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.6 * losses[0]


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight, _ = train(tiny_ddpm_config(num_steps=20), str(tmp_path / "straight"))
    train(tiny_ddpm_config(num_steps=10), str(tmp_path / "resumed"))
    resumed, _ = train(tiny_ddpm_config(num_steps=20), str(tmp_path / "resumed"))
    assert int(resumed.step) == 20
    assert_trees_close(straight.params, resumed.params, atol=1e-6)
    assert_trees_close(straight.ema_params, resumed.ema_params, atol=1e-6)
    log_a = workdir_io.read_metrics(str(tmp_path / "straight"))
    log_b = workdir_io.read_metrics(str(tmp_path / "resumed"))
    assert [m["step"] for m in log_b] == [5, 10, 15, 20]
    np.testing.assert_allclose([m["loss"] for m in log_a], [m["loss"] for m in log_b], rtol=1e-5)


@pytest.mark.slow
def test_resume_drops_log_lines_written_after_the_checkpoint(tmp_path):
    train(tiny_ddpm_config(num_steps=10), str(tmp_path))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 15, "loss": 9.0}\n')  # logged by a run killed before its checkpoint
    train(tiny_ddpm_config(num_steps=20), str(tmp_path))
    assert [m["step"] for m in workdir_io.read_metrics(str(tmp_path))] == [5, 10, 15, 20]
    assert workdir_io.read_metrics(str(tmp_path))[2]["loss"] != 9.0


@pytest.mark.devices(8)
def test_eight_devices_equal_one_device():
    """One jitted step with the batch split over 8 devices gives the 1-device update."""
    assert jax.device_count() == 8
    config = tiny_ddpm_config()
    method, optimizer = builders.build_method(config), make_optimizer(config.optim)
    images, labels = digits.load_digits_arrays("train")
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        state = initial_state(method, optimizer, 0, mesh)
        batch = parallel.global_batch({"image": images[:32], "label": labels[:32]}, mesh)
        results.append(jit_train_step(method, optimizer, 0.99, mesh)(state, batch))
    (one, m_one), (eight, m_eight) = results
    assert len(eight.params["conv_in"]["kernel"].sharding.device_set) == 8
    np.testing.assert_allclose(m_one["loss"], m_eight["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_one["grad_norm"], m_eight["grad_norm"], rtol=1e-4)
    assert_trees_close(one.params, eight.params, atol=1e-6)


@pytest.mark.slow
@pytest.mark.devices(8)
def test_two_processes_on_loopback_train_and_agree(tmp_path):
    """Two processes (one CPU device each) train together with the state FSDP-sharded across
    them (the batch split over both), and end on the parameters of one process with two
    devices (data parallel; tests/test_sharding.py shows FSDP equals data parallel)."""
    port = portpicker.pick_unused_port()
    # each worker compiles into its own empty cache: with the suite's shared one, a worker that
    # finds the other's programs there runs ahead and its first collective (Gloo's context, a
    # fixed 30 s wait) times out while the other still compiles
    env = lambda i: dict(os.environ, PYTHONPATH=os.path.dirname(HERE),  # noqa: E731
                         JAX_COMPILATION_CACHE_DIR=str(tmp_path / f"xla_cache_{i}"))
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "distributed_worker.py"),
                               str(port), str(i), str(tmp_path / "run"), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env(i))
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    sums = [next(l for l in out.splitlines() if l.startswith("checksum")) for out, _ in outs]
    assert sums[0] == sums[1]
    single, _ = train(tiny_ddpm_config(num_steps=6, checkpoint_every=3), str(tmp_path / "single"),
                      parallel.make_mesh(jax.devices()[:2]))
    expected = sum(float(np.sum(np.abs(np.asarray(x)), dtype=np.float64))
                   for x in jax.tree.leaves(single.params))
    assert float(sums[0].split()[1]) == pytest.approx(expected, rel=1e-5)
