"""Post-hoc EMA wired into training (EDM2, Karras et al. 2024, Sec. 3 and App. C): the profiles
the jitted step tracks against the closed-form weights, snapshots that a kill and resume leave
as an uninterrupted run writes them, and `--mode=posthoc_ema` end to end on a tiny digits run."""
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath

from helpers import tiny_ddpm_config
from diffusion_jax import builders, launcher, parallel, runs
from diffusion_jax.errors import ConfigError, UserError
from diffusion_jax.methods.base import Method
from diffusion_jax.training import ema_snapshots, loop
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.posthoc_ema import (combine_snapshots, power_ema_weight,
                                                power_function_beta, reconstruction_coefficients,
                                                sigma_rel_to_gamma)
from diffusion_jax.training.state import create_train_state
from diffusion_jax.training.step import train_step

SIGMA_RELS = (0.05, 0.10)


def closed_form(thetas, gamma):
    """sum_k w_k theta_k, w_k = (k^(g+1) - (k-1)^(g+1)) / n^(g+1) (the profile integrated over
    the images of step k), float64."""
    n = len(thetas)
    k = np.arange(1, n + 1, dtype=np.float64)
    w = (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / n ** (gamma + 1)
    return np.tensordot(w, np.float64(thetas), axes=1)


def test_in_step_profiles_equal_the_closed_form_weights_on_a_scripted_trajectory():
    # loss -<theta, x_k> with SGD at lr 1 scripts theta_k = theta_{k-1} + x_k
    n, rng = 40, np.random.default_rng(0)
    xs = rng.standard_normal((n, 6)).astype(np.float32)
    gammas = tuple(float(g) for g in sigma_rel_to_gamma(np.asarray(SIGMA_RELS)))
    state = create_train_state({"w": jnp.zeros(6)}, optax.sgd(1.0), jax.random.PRNGKey(0),
                               num_power_emas=2)
    loss = lambda p, batch, rng, aux, step: (-jnp.sum(p["w"] * batch["image"]), {})  # noqa
    step = jax.jit(lambda s, b: train_step(s, b, loss_fn=loss, optimizer=optax.sgd(1.0),
                                           ema_decay=0.9, power_ema_gammas=gammas)[0])
    thetas = []
    for x in xs:
        state = step(state, {"image": jnp.asarray(x)})
        thetas.append(np.asarray(state.params["w"], np.float64))
    tol = 1e-5 * np.abs(thetas).max()  # float32 rounding of n updates
    for profile, gamma, other in zip(state.power_emas, gammas, gammas[::-1]):
        tracked = np.asarray(profile["w"], np.float64)
        np.testing.assert_allclose(tracked, closed_form(thetas, gamma), rtol=0, atol=tol)
        # negative controls: the other profile's weights, and weights one step late
        assert np.abs(tracked - closed_form(thetas, other)).max() > 100 * tol
        assert np.abs(tracked - closed_form(thetas[:-1], gamma)).max() > 100 * tol


def test_the_float32_update_weight_keeps_its_precision_a_million_steps_in():
    gamma, n = 6.94, 10 ** 6
    exact = -np.expm1((gamma + 1) * np.log1p(-1.0 / n))
    assert abs(float(power_ema_weight(gamma, n)) / exact - 1) < 1e-5
    # negative control: 1 - Eq. 127 computed directly in float32 is a per cent off
    direct = 1 - float(power_function_beta(gamma, jnp.float32(n * 2048.0), jnp.float32(2048.0)))
    assert abs(direct / exact - 1) > 1e-3
    assert float(power_ema_weight(gamma, 1)) == 1.0


@dataclasses.dataclass(frozen=True)
class Quadratic(Method):
    """A one-array method whose steps compile in a moment: a noisy regression onto the data."""

    def init_params(self, rng):
        return {"w": jax.random.normal(rng, (4, 4, 1))}

    def loss(self, params, batch, rng, aux, step):
        noise = 0.1 * jax.random.normal(rng, batch["image"].shape)
        return jnp.mean((params["w"] - batch["image"] - noise) ** 2), {}


def quadratic_run(workdir, num_steps=8, **settings):
    """`loop.train` of `Quadratic` on 32 random 4x4 images: batch 4, checkpoints at multiples of
    4, profiles of SIGMA_RELS with snapshots every 2 steps unless `settings` say otherwise."""
    data = list(np.random.default_rng(1).standard_normal((32, 4, 4, 1)).astype(np.float32))
    settings = loop.Settings(**dict(dict(num_steps=num_steps, batch_size=4, checkpoint_every=4,
                                         log_every=4, ema_sigma_rels=SIGMA_RELS,
                                         ema_snapshot_every=2), **settings))
    state, _ = loop.train(Quadratic(), optax.adam(1e-2), parallel.make_mesh(), settings,
                          str(workdir), lambda aux: (data, lambda x: (x, 0)))
    return state


def snapshot_trees(workdir):
    shapes = {"w": jax.ShapeDtypeStruct((4, 4, 1), jnp.float32)}
    return {s.step: [jax.tree.map(np.asarray, p) for p in
                     ema_snapshots.read_profiles(str(workdir), s.step, shapes, len(s.gammas))]
            for s in ema_snapshots.list_snapshots(str(workdir))}


def assert_same_trees(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 8-step run: snapshots at 2, 4, 6, 8, checkpoints at 4 and 8."""
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, jax.tree.map(np.asarray, quadratic_run(workdir).power_emas)


@pytest.fixture(scope="module")
def stopped_at_6(tmp_path_factory):
    """The same run stopped at step 6 (checkpoints 4 and 6, snapshots 2, 4, 6)."""
    workdir = tmp_path_factory.mktemp("stopped")
    quadratic_run(workdir, num_steps=6)
    return workdir


@pytest.mark.parametrize("lost", ["checkpoint", "snapshot"])
def test_a_resumed_runs_profiles_and_snapshots_equal_an_uninterrupted_runs(straight,
                                                                          stopped_at_6, lost,
                                                                          tmp_path):
    # a kill after snapshot 6 before checkpoint 6 (the resumed run retraces steps 5 and 6 and
    # must not write snapshot 6 again), or after checkpoint 6 before snapshot 6 (it must)
    workdir = tmp_path / "run"
    shutil.copytree(stopped_at_6, workdir)
    shutil.rmtree(workdir / ("checkpoints" if lost == "checkpoint" else "ema_snapshots") / "6")
    kept = workdir / "ema_snapshots" / "6"
    before = os.stat(kept).st_mtime_ns if lost == "checkpoint" else None
    state = quadratic_run(workdir)
    expected, found = snapshot_trees(straight[0]), snapshot_trees(workdir)
    assert sorted(found) == sorted(expected) == [2, 4, 6, 8]
    for step in expected:
        assert_same_trees(found[step], expected[step])
    assert_same_trees(state.power_emas, straight[1])
    if before is not None:
        assert os.stat(kept).st_mtime_ns == before
    # negative control: the same comparison tells neighbouring snapshots apart
    with pytest.raises(AssertionError):
        assert_same_trees(found[8], expected[6])


def test_a_checkpoint_holds_the_profiles_and_restores_them_for_any_config(straight):
    workdir, profiles = straight
    checkpointer = Checkpointer(str(workdir), read_only=True)
    assert checkpointer.power_ema_count() == 2
    # restore_state (sample and eval) reads the profile count from the checkpoint
    state = loop.restore_state(Quadratic(), optax.adam(1e-2), str(workdir), parallel.make_mesh())
    assert_same_trees(state.power_emas, profiles)


def test_without_post_hoc_ema_checkpoints_keep_their_layout(tmp_path):
    state = quadratic_run(tmp_path, num_steps=4, ema_sigma_rels=(), ema_snapshot_every=0)
    assert state.power_emas == ()
    assert Checkpointer(str(tmp_path), read_only=True).power_ema_count() == 0
    saved = ocp.StandardCheckpointHandler().metadata(
        epath.Path(tmp_path) / "checkpoints" / "4" / "state").tree
    assert sorted(saved) == ["aux", "ema_params", "opt_state", "params", "rng", "step"]
    assert not os.path.exists(ema_snapshots.snapshot_directory(str(tmp_path)))


def tiny_config(num_steps=8, **ema):
    config = tiny_ddpm_config(num_steps=num_steps, batch_size=8, checkpoint_every=4,
                              log_every=4)
    config.ema.update(dict(dict(sigma_rels=SIGMA_RELS, snapshot_every=2), **ema))
    config.compilation_cache_dir = ""
    return config


@pytest.fixture
def written_snapshots(tmp_path):
    """A work directory with snapshots at steps 2, 4, 6, 8 (no checkpoint)."""
    writer = ema_snapshots.SnapshotWriter(str(tmp_path / "train"), SIGMA_RELS, batch_size=8,
                                          async_save=False)
    for step in (2, 4, 6, 8):
        writer.save(step, [{"w": np.full(3, step, np.float32)}] * 2)
    writer.close()
    return str(tmp_path / "train")


@pytest.mark.parametrize("overrides, fragment", [
    (dict(sigma_rel=0.3), "ema.sigma_rel must be in (0, 0.289)"),
    (dict(sigma_rel=0.0), "ema.sigma_rel must be in (0, 0.289)"),
    (dict(sigma_rel=0.1, snapshot_step=10), "beyond the last snapshot, step 8"),
    (dict(sigma_rel=0.1, snapshot_step=3), "snapshots are at steps 2, 4, 6, 8"),
    (dict(sigma_rel=0.1), "no checkpoint in"),
])
def test_posthoc_ema_mistakes_are_one_line_errors(written_snapshots, tmp_path, overrides,
                                                  fragment):
    with pytest.raises(UserError) as error:
        launcher.run(tiny_config(**overrides), str(tmp_path / "out"), "posthoc_ema",
                     train_workdir=written_snapshots)
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "out")


def test_posthoc_ema_without_snapshots_says_to_train_with_them(tmp_path):
    with pytest.raises(ConfigError, match="no post-hoc EMA snapshots"):
        launcher.run(tiny_config(sigma_rel=0.1), str(tmp_path), "posthoc_ema")


@pytest.mark.parametrize("ema, fragment", [
    (dict(snapshot_every=0), "set both"),
    (dict(sigma_rels=(), snapshot_every=5), "set both"),
    (dict(sigma_rels=(0.05, 0.4)), "ema.sigma_rels must each be in (0, 0.289)"),
    (dict(sigma_rels=(0.05, 0.05)), "duplicates"),
])
def test_bad_training_ema_settings_are_one_line_errors_before_anything_runs(tmp_path, ema,
                                                                           fragment):
    with pytest.raises(ConfigError) as error:
        launcher.run(tiny_config(**ema), str(tmp_path / "run"), "train")
    assert fragment in str(error.value)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_posthoc_ema_mode_on_a_digits_run_writes_the_reconstruction_sample_and_eval_restore(
        tmp_path):
    train_dir, config = str(tmp_path / "train"), tiny_config(sigma_rel=0.085)
    launcher.train(config, train_dir)
    assert launcher.run(config, str(tmp_path / "out"), "posthoc_ema",
                        train_workdir=train_dir) == 0
    out = launcher.posthoc_output(str(tmp_path / "out"), 0.085, 8)
    mesh = builders.build_mesh(config)
    method, state = runs.restore_or_pretrained(config, out, mesh)  # as sample and eval do
    assert int(state.step) == 8 and state.power_emas == ()
    # the reconstruction straight from posthoc_ema: every profile of every snapshot up to 8
    shapes = loop.abstract_state(method, builders.build_optimizer(config), mesh).params
    snapshots = ema_snapshots.list_snapshots(train_dir)
    profiles = [p for s in snapshots
                for p in ema_snapshots.read_profiles(train_dir, s.step, shapes, 2)]
    t = [s.images for s in snapshots for _ in s.gammas]
    gammas = [g for s in snapshots for g in s.gammas]

    def close_to(sigma_rel):
        expected = combine_snapshots(profiles,
                                     reconstruction_coefficients(t, gammas, 64, sigma_rel))
        return all(np.allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
                   for x, y in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)))

    assert close_to(0.085)
    assert not close_to(0.2)  # negative control: the EMA of another width
    _, trained = runs.restore(config, train_dir, mesh)  # raw parameters: the newest checkpoint
    assert_same_trees(state.params, trained.params)
    assert launcher.run(config, str(tmp_path / "samples"), "sample", train_workdir=out) == 0


@pytest.mark.slow
def test_posthoc_ema_digits_experiment_quick_writes_its_table_and_plot(tmp_path):
    from experiments import posthoc_ema_digits

    assert posthoc_ema_digits.run(str(tmp_path), "quick") == 0
    table = (tmp_path / "results.md").read_text()
    for sigma_rel in posthoc_ema_digits.QUICK_SWEEP:
        assert f"| post-hoc EMA | {sigma_rel} |" in table
    assert "| traditional EMA 0.999 |" in table and "| raw weights |" in table
    assert (tmp_path / "posthoc_ema_digits.png").exists()
    with pytest.raises(ConfigError, match="valid: quick"):
        posthoc_ema_digits.run(str(tmp_path), "huge")
