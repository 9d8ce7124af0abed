"""Fine-tuning: a run that starts from another run's (or an imported checkpoint's) weights
(`training.init_from`), frozen parameters (`training.trainable`) and LoRA adapters."""
import os

import flax.traverse_util
import jax
import numpy as np
import pytest

from diffusion_jax import builders, launcher, parallel, runs, workdir as workdir_io
from diffusion_jax.errors import ConfigError
from diffusion_jax.importers.run import write_imported_run
from diffusion_jax.training import loop
from diffusion_jax.training.optim import parameter_paths
from diffusion_jax.training.step import jit_train_step
from helpers import TINY_OVERRIDES, launch_one_device, random_params, tiny_ddpm_config


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def assert_identical(a, b):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained tiny run (3 steps, EMA decay 0.5 so that params and EMA differ) and its state."""
    workdir = str(tmp_path_factory.mktemp("source"))
    config = tiny_ddpm_config(num_steps=3, checkpoint_every=3, log_every=3, ema_decay=0.5)
    assert launcher.run(config, workdir, "train") == 0
    _, _, state = runs.restore_run(workdir)
    return workdir, state


def fine_tuning_state(config):
    """The step-0 state `loop.train` starts a fresh run of `config` from."""
    method, mesh = builders.build_method(config), parallel.make_mesh()
    initial = runs.init_from(config, mesh) if config.training.init_from else None
    optimizer = builders.build_optimizer(config)
    return method, optimizer, mesh, loop.initial_state(method, optimizer, 1, mesh,
                                                       initial=initial)


def test_a_fine_tuned_run_starts_from_the_source_weights_with_a_fresh_optimizer(source):
    workdir, src = source
    assert int(src.step) == 3
    assert not np.array_equal(flat(src.params)["conv_out/kernel"],
                              flat(src.ema_params)["conv_out/kernel"])
    config = tiny_ddpm_config(init_from=workdir, seed=1)
    runs.check_init_from(config)
    _, optimizer, _, state = fine_tuning_state(config)
    assert_identical(state.params, src.params)
    assert_identical(state.ema_params, src.ema_params)
    assert int(state.step) == 0
    fresh = optimizer.init(state.params)  # Adam's moments and count at zero
    for got, want in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(got, want)
    assert any(np.abs(np.asarray(m)).sum() > 0 for m in jax.tree.leaves(src.opt_state))
    # negative control: without init_from the same seed gives other weights
    _, _, _, scratch = fine_tuning_state(tiny_ddpm_config(seed=1))
    assert not np.array_equal(flat(scratch.params)["conv_out/kernel"],
                              flat(src.params)["conv_out/kernel"])


def test_a_step_of_the_source_and_an_imported_checkpoint_work_the_same(source, tmp_path):
    workdir, src = source
    config = tiny_ddpm_config(init_from=f"{workdir}:3")
    _, _, _, state = fine_tuning_state(config)
    assert_identical(state.params, src.params)
    with pytest.raises(ConfigError, match="no checkpoint 2 in .*steps: 3"):
        runs.check_init_from(tiny_ddpm_config(init_from=f"{workdir}:2"))
    shapes = jax.eval_shape(builders.build_method(config).init_params, jax.random.PRNGKey(0))
    imported = random_params(shapes, seed=3)
    write_imported_run(str(tmp_path / "imported"), tiny_ddpm_config(), imported)
    _, _, _, state = fine_tuning_state(tiny_ddpm_config(init_from=str(tmp_path / "imported")))
    assert_identical(state.params, imported)
    assert_identical(state.ema_params, imported)


def test_a_mismatch_is_one_line_naming_the_paths_unless_init_allow_missing_admits_them(source):
    workdir, src = source
    config = tiny_ddpm_config(init_from=workdir)
    config.model.class_conditional = True  # a new label embedding
    config.model.ch_mult = (1, 3)  # more channels at the second level
    with pytest.raises(ConfigError) as error:
        runs.check_init_from(config)
    message = str(error.value)
    assert "\n" not in message
    assert "label_emb/embedding (not in the source)" in message
    assert "ResnetBlock_2/Conv_0/kernel ((3, 3, 32, 32) in the source, (3, 3, 48, 48) here)" \
        in message
    # negative control: admitting only the label embedding leaves the channel change refused
    config.training.init_allow_missing = "^label_emb/"
    with pytest.raises(ConfigError, match="ResnetBlock_2/Conv_0/kernel") as error:
        runs.check_init_from(config)
    assert "label_emb" not in str(error.value)
    config.model.ch_mult = (1, 2)
    runs.check_init_from(config)
    method, _, _, state = fine_tuning_state(config)
    got, want = flat(state.params), flat(src.params)
    fresh = flat(loop.initial_state(method, builders.build_optimizer(config), 1,
                                    parallel.make_mesh()).params)
    np.testing.assert_array_equal(got.pop("label_emb/embedding"), fresh["label_emb/embedding"])
    assert got.keys() == want.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def train_steps(config, steps=3):
    """The state after `steps` training steps of `config` from its initial state."""
    method, optimizer, mesh, state = fine_tuning_state(config)
    step = jit_train_step(method, optimizer, lambda k: 0.9, mesh)
    images = np.random.default_rng(0).uniform(-1, 1, (8,) + method.image_shape)
    batch = {"image": images.astype(np.float32), "label": np.zeros(8, np.int32)}
    first = jax.tree.map(np.asarray, state.params)
    for _ in range(steps):
        state, _ = step(state, batch)
    return first, state


def test_frozen_parameters_stay_bit_identical_while_the_trainable_ones_move():
    first, state = train_steps(tiny_ddpm_config(trainable=r"^(conv_in|conv_out)/"))
    before, after = flat(first), flat(state.params)
    trained = [k for k in before if k.startswith(("conv_in/", "conv_out/"))]
    assert len(trained) == 4
    for key in before:
        if key in trained:
            assert not np.array_equal(before[key], after[key]), key
        else:
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    # no optimizer state for frozen leaves: Adam's two moments of the trainable ones only
    floats = sum(np.size(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
    assert floats == 2 * sum(before[k].size for k in trained)
    # negative control: without training.trainable every convolution moves (the time
    # embedding may not: one channel per group norm removes a per-channel shift exactly)
    first, state = train_steps(tiny_ddpm_config())
    before, after = flat(first), flat(state.params)
    convolutions = [k for k in before if k.endswith("kernel") and before[k].ndim == 4]
    assert len(convolutions) == 25
    assert all(not np.array_equal(before[k], after[k]) for k in convolutions)


def test_a_trainable_expression_matching_nothing_is_a_config_error(tmp_path):
    config = tiny_ddpm_config(trainable="^no_such_layer/")
    with pytest.raises(ConfigError, match="training.trainable '\\^no_such_layer/' matches no "
                                          "parameter path"):
        launcher.validate(config, str(tmp_path), "train", None, parallel.make_mesh())


@pytest.mark.slow
def test_launch_fine_tunes_from_a_run_and_a_resume_ignores_init_from(source, tmp_path):
    workdir, src = source
    run = str(tmp_path / "finetuned")
    common = [f"--workdir={run}", *TINY_OVERRIDES, "--config.training.batch_size=16",
              "--config.training.log_every=2", "--config.training.checkpoint_every=2",
              "--config.training.sample_at_end=False", "--config.optim.warmup_steps=0"]
    result = launch_one_device(*common, "--config.training.num_steps=2",
                               f"--config.training.init_from={workdir}:3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in workdir_io.read_metrics(run)] == [2]  # step and data from 0
    # the resumed run reads its own checkpoint: a missing init_from is never looked at
    result = launch_one_device(*common, "--config.training.num_steps=4",
                               f"--config.training.init_from={tmp_path / 'missing'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in workdir_io.read_metrics(run)] == [2, 4]
    _, _, state = runs.restore_run(run, step=2)
    moved = [np.abs(flat(state.params)[k] - v).max() for k, v in flat(src.params).items()]
    assert 0 < max(moved) < 0.1  # two small steps away from the source, not a fresh network
    # negative control: a fresh run with a missing init_from is a one-line error
    result = launch_one_device(f"--workdir={tmp_path / 'other'}", *TINY_OVERRIDES,
                               f"--config.training.init_from={tmp_path / 'missing'}")
    assert result.returncode == 2 and "no config.json" in result.stderr, result.stderr[-2000:]
