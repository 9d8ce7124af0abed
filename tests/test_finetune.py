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
from helpers import TINY_MODEL, TINY_OVERRIDES, launch_one_device, random_params, tiny_ddpm_config


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_mismatch_is_one_line_naming_the_paths_unless_init_allow_missing_admits_them(source):
    workdir, src = source
    config = tiny_ddpm_config(init_from=workdir)
    config.model.class_conditional = True  # a new label embedding
    with pytest.raises(ConfigError) as error:
        runs.check_init_from(config)
    message = str(error.value)
    assert "\n" not in message
    assert "1 parameters differ from this network: label_emb/embedding (not in the source);" \
        in message
    config.model.ch_mult = (1, 3)  # more channels at the second level: 67 paths, 20 named
    with pytest.raises(ConfigError) as error:
        runs.check_init_from(config)
    message = str(error.value)
    assert "\n" not in message and "67 parameters differ" in message and "and 47 more" in message
    assert "ResnetBlock_1/Conv_0/kernel ((3, 3, 16, 32) in the source, (3, 3, 16, 48) here)" \
        in message
    # negative control: admitting only the label embedding leaves the channel change refused
    config.training.init_allow_missing = "^label_emb/"
    with pytest.raises(ConfigError, match="66 parameters differ.*ResnetBlock_1/Conv_0/kernel"):
        runs.check_init_from(config)
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


@pytest.mark.slow
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


def lora_config(rank=2, targets="AttnBlock", **training):
    config = tiny_ddpm_config(**training)
    config.model.update(attn_resolutions=(4,), lora_rank=rank, lora_alpha=3.0,
                        lora_targets=targets)
    return config


def lora_paths(params):
    return [p for p in parameter_paths(params) if p.endswith(("lora_A", "lora_B"))]


@pytest.mark.parametrize("name, options, rank, targets, expected", [
    # U-Net: 4 attention blocks at 4x4 with C = 32; qkv C x 3C and proj_out C x C: 6 r C each
    ("unet", dict(TINY_MODEL, attn_resolutions=(4,)), 2, "AttnBlock", 4 * 6 * 2 * 32),
    # NCSN++: 3 attention blocks at 4x4 with C = 32
    ("ncsnpp", dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    dropout=0.0), 2, "AttnBlock", 3 * 6 * 2 * 32),
    # DiT depth 2, hidden 32: qkv 32 x 96 and proj 32 x 32 per block, r (128 + 64) each
    ("dit", dict(patch_size=2, hidden_size=32, depth=2, num_heads=4), 4, r"attn/(qkv|proj)$",
     2 * 4 * (128 + 64)),
])
def test_lora_of_rank_r_trains_r_times_d_in_plus_d_out_per_adapted_projection(
        name, options, rank, targets, expected):
    config = tiny_ddpm_config()
    config.model = type(config.model)(dict(name=name, dtype="float32", class_conditional=False,
                                           lora_rank=rank, lora_alpha=1.0, lora_targets=targets,
                                           **options))
    method = builders.build_method(config)
    shapes = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
    leaves = {"/".join(k): v.shape for k, v in flax.traverse_util.flatten_dict(shapes).items()}
    adapters = {k: v for k, v in leaves.items() if k.endswith(("lora_A", "lora_B"))}
    assert sum(np.prod(v) for v in adapters.values()) == expected
    for key, shape in adapters.items():  # A is d_in x r, B is r x d_out
        kernel = leaves[key.rsplit("/", 1)[0] + "/kernel"]
        assert shape == ((kernel[-2], rank) if key.endswith("A") else (rank, kernel[-1]))
    # the optimizer keeps Adam's two moments for the adapters only: they alone train
    opt_state = jax.eval_shape(builders.build_optimizer(config).init, shapes)
    assert sum(np.prod(s.shape) for s in jax.tree.leaves(opt_state) if s.shape) == 2 * expected


def test_lora_is_w_x_plus_alpha_over_r_b_a_x_and_starts_as_the_base_network():
    import flax.linen as nn

    from diffusion_jax.models.lora import LoRA

    layer = LoRA(nn.Dense(5), rank=3, alpha=6.0)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    assert params["lora_A"].shape == (4, 3) and not np.any(params["lora_B"])
    np.testing.assert_allclose(np.std(params["lora_A"]), 1 / 3, rtol=0.5)  # N(0, 1/r^2)
    base = nn.Dense(5).init(jax.random.PRNGKey(0), x)["params"]
    np.testing.assert_array_equal(params["kernel"], base["kernel"])
    params = dict(params, lora_B=np.random.default_rng(1).standard_normal((3, 5), np.float32))
    scale = 6.0 / 3  # alpha / r
    expected = (x @ params["kernel"] + params["bias"]
                + scale * (x @ params["lora_A"]) @ params["lora_B"])
    np.testing.assert_allclose(layer.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_lora_run_from_a_base_run_starts_as_it_trains_only_adapters_and_merges(source):
    workdir, src = source
    config = lora_config(init_from=workdir)
    config.model.attn_resolutions = ()  # the source's network
    config.model.lora_targets = "nin_shortcut|Dense_0"
    runs.check_init_from(config)  # the new adapters need no init_allow_missing
    method, optimizer, mesh, state = fine_tuning_state(config)
    merged = flat(runs.sampling_state(config, state).params)
    assert_identical(flax.traverse_util.unflatten_dict(
        {tuple(k.split("/")): v for k, v in merged.items()}), src.params)  # B = 0: the source
    x = np.random.default_rng(2).standard_normal((2,) + method.image_shape).astype(np.float32)
    t = np.array([10.0, 60.0], np.float32)
    base = builders.build_method(tiny_ddpm_config())
    np.testing.assert_array_equal(method.apply(state.params, x, t), base.apply(src.params, x, t))
    # a few training steps move only the adapters
    step = jit_train_step(method, optimizer, lambda k: 0.9, mesh)
    images = np.random.default_rng(0).uniform(-1, 1, (8,) + method.image_shape)
    batch = {"image": images.astype(np.float32), "label": np.zeros(8, np.int32)}
    for _ in range(3):
        state, _ = step(state, batch)
    after = flat(state.params)
    adapters = lora_paths(state.params)
    assert len(adapters) == 2 * (8 + 5)  # Dense_0 of the 8 residual blocks, 5 nin_shortcuts
    assert all(np.any(after[k]) for k in adapters if k.endswith("lora_B"))  # B left 0
    for key, value in flat(src.params).items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    # merged weights in the plain network give the adapted network's outputs
    adapted = np.asarray(method.apply(state.params, x, t))
    merged = runs.sampling_state(config, state).params
    assert not lora_paths(merged)
    np.testing.assert_allclose(base.apply(merged, x, t), adapted, rtol=1e-5, atol=1e-5)
    # negative control: the adapters changed the network
    assert np.max(np.abs(adapted - np.asarray(base.apply(src.params, x, t)))) > 1e-4


def test_lora_targets_matching_no_projection_is_a_config_error():
    config = lora_config(targets="^no_such_layer")
    with pytest.raises(ConfigError, match="model.lora_targets '\\^no_such_layer' matches no"):
        jax.eval_shape(builders.build_method(config).init_params, jax.random.PRNGKey(0))


@pytest.mark.slow
def test_launch_trains_lora_from_a_run_checkpoints_the_adapters_and_samples_merged(source,
                                                                                  tmp_path):
    workdir, src = source
    run = str(tmp_path / "lora")
    flags = [f"--workdir={run}", *TINY_OVERRIDES, "--config.training.batch_size=16",
             "--config.training.num_steps=2", "--config.training.log_every=2",
             "--config.training.checkpoint_every=2", "--config.training.sample_at_end=False",
             "--config.optim.warmup_steps=0", f"--config.training.init_from={workdir}",
             "--config.model.lora_rank=2", "--config.model.lora_targets=nin_shortcut"]
    result = launch_one_device(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    _, _, state = runs.restore_run(run)  # the multi-transform optimizer state restores too
    after, before = flat(state.params), flat(src.params)
    assert len(lora_paths(state.params)) == 10 and all(
        np.any(after[k]) for k in lora_paths(state.params) if k.endswith("lora_B"))
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    result = launch_one_device(*flags, "--mode=sample", "--config.sampling.num_samples=4",
                               "--config.sampling.batch_size=4", "--config.sampling.num_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(run, "samples", "sample_2_1.png"))
