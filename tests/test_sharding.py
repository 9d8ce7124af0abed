"""Sharding and scale: FSDP and data-parallel steps equal one device, gradient accumulation
equals one big batch, several steps per jitted call equal single steps, checkpoints restore onto
fewer devices, remat and bf16 change nothing beyond rounding."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import TINY_MODEL, tiny_ddpm_config

from diffusion_jax import builders, parallel
from diffusion_jax import workdir as workdir_io
from diffusion_jax.errors import ConfigError
from diffusion_jax.models.unet import UNet
from diffusion_jax.launcher import train
from diffusion_jax.training.loop import abstract_state, call_sizes, initial_state
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import jit_train_step, train_step


# Biases in front of a GroupNorm have zero gradient in exact arithmetic; with Adam's eps = 1e-8
# their float-rounding gradients (1e-9, different for each device layout) become full-size
# updates. eps = 1e-3 keeps those at ~0 and leaves the real updates of the comparison intact.
ADAM_EPS = 1e-3


def _leaves(tree):
    return [np.asarray(parallel.to_host(x)) for x in jax.tree.leaves(tree)]


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _one_step(config, mesh):
    method = builders.build_method(config)
    optimizer = make_optimizer(config.optim)
    state = initial_state(method, optimizer, 0, mesh)
    shardings = jax.tree.map(lambda s: s.sharding, abstract_state(method, optimizer, mesh))
    step = jit_train_step(method, optimizer, 0.9, mesh, shardings)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    return state, float(metrics["loss"])


@pytest.mark.devices(8)
def test_mesh_shapes_and_bad_meshes():
    assert dict(parallel.make_mesh(data=2, fsdp=-1).shape) == {"data": 2, "fsdp": 4}
    assert dict(parallel.make_mesh().shape) == {"data": 8, "fsdp": 1}
    config = tiny_ddpm_config()
    config.mesh.update(data=3, fsdp=2)
    with pytest.raises(ConfigError, match="does not cover the 8 devices"):
        builders.build_mesh(config)


@pytest.mark.slow
@pytest.mark.devices(8)
def test_fsdp_and_data_parallel_steps_equal_one_device():
    config = tiny_ddpm_config()
    config.optim.eps = ADAM_EPS
    single, loss1 = _one_step(config, parallel.make_mesh(jax.devices()[:1]))
    data, loss8 = _one_step(config, parallel.make_mesh())
    fsdp, loss_fsdp = _one_step(config, parallel.make_mesh(data=2, fsdp=4))
    assert loss1 == pytest.approx(loss8, rel=1e-5) and loss1 == pytest.approx(loss_fsdp, rel=1e-5)
    _assert_trees_close(single.params, data.params)
    _assert_trees_close(single.params, fsdp.params)
    _assert_trees_close(single.opt_state, fsdp.opt_state)
    # the parameters, their EMA and the Adam moments really are split over the fsdp axis
    kernel = fsdp.params["conv_in"]["kernel"]  # (3, 3, 1, 16): the 16 output channels split
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (3, 3, 1, 4)
    sharded = [x for x in jax.tree.leaves(fsdp.opt_state) if x.ndim and
               "fsdp" in str(x.sharding.spec)]
    assert len(sharded) >= len(jax.tree.leaves(fsdp.params))


def test_gradient_accumulation_equals_one_big_batch():
    """A loss that is a mean over examples and ignores the step's randomness: k micro-batches
    must give the very update of the whole batch."""
    def loss_fn(params, batch, rng, aux, step):
        pred = batch["x"] @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2), {"pred_mean": jnp.mean(pred)}

    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros((2,))}
    batch = {"x": jnp.asarray(rng.normal(size=(24, 3)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=(24, 2)), jnp.float32)}
    optimizer = optax.adam(1e-2)
    from diffusion_jax.training.state import create_train_state

    state = create_train_state(params, optimizer, jax.random.key(0))
    whole, m1 = train_step(state, batch, loss_fn=loss_fn, optimizer=optimizer, ema_decay=0.5)
    for k in (2, 4):
        accumulated, mk = train_step(state, batch, loss_fn=loss_fn, optimizer=optimizer,
                                     ema_decay=0.5, grad_accum_steps=k)
        _assert_trees_close(whole.params, accumulated.params, rtol=1e-6, atol=1e-7)
        assert float(mk["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
        assert float(mk["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
        assert float(mk["pred_mean"]) == pytest.approx(float(m1["pred_mean"]), rel=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_trains_through_the_loop(tmp_path):
    config = tiny_ddpm_config(num_steps=4, batch_size=32, grad_accum_steps=2, log_every=2)
    state, _ = train(config, str(tmp_path))
    assert int(state.step) == 4
    config.training.grad_accum_steps = 3
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        train(config, str(tmp_path / "bad"))


@pytest.mark.devices(8)
def test_several_steps_per_call_equal_single_steps():
    """k steps scanned in one jitted call: the same states and metrics as k separate calls
    (the step's randomness depends on state.step only), here FSDP-sharded over 2 x 4."""
    config = tiny_ddpm_config()
    config.optim.eps = ADAM_EPS
    mesh = parallel.make_mesh(data=2, fsdp=4)
    method, optimizer = builders.build_method(config), make_optimizer(config.optim)
    shardings = jax.tree.map(lambda s: s.sharding, abstract_state(method, optimizer, mesh))
    rng = np.random.default_rng(0)
    batches = {"image": rng.uniform(-1, 1, (3, 16, 8, 8, 1)).astype(np.float32),
               "label": rng.integers(0, 10, (3, 16)).astype(np.int32)}
    single = jit_train_step(method, optimizer, 0.9, mesh, shardings)
    state, losses = initial_state(method, optimizer, 0, mesh), []
    for i in range(3):
        state, metrics = single(state, parallel.global_batch(
            jax.tree.map(lambda x: x[i], batches), mesh))
        losses.append(float(metrics["loss"]))
    scanned = jit_train_step(method, optimizer, 0.9, mesh, shardings, steps_per_call=3)
    state3, metrics3 = scanned(initial_state(method, optimizer, 0, mesh),
                               parallel.global_batch(batches, mesh, leading=1))
    assert int(state3.step) == 3 and metrics3["loss"].shape == (3,)
    np.testing.assert_allclose(np.asarray(metrics3["loss"]), losses, rtol=1e-6)
    _assert_trees_close(state.params, state3.params, rtol=1e-6, atol=1e-7)
    _assert_trees_close(state.opt_state, state3.opt_state, rtol=1e-6, atol=1e-7)
    assert state3.params["conv_in"]["kernel"].sharding == state.params["conv_in"]["kernel"].sharding


def test_call_sizes_keep_every_log_and_checkpoint_step():
    sizes = list(call_sizes(3, 20, 4, (5, 10)))
    ends = np.cumsum([3] + sizes)
    assert sizes == [1, 1, 4, 1, 4, 1, 4, 1] and ends[-1] == 20
    assert {5, 10, 15, 20} <= set(ends.tolist())
    assert list(call_sizes(0, 8, 4, (4, 8))) == [4, 4]


@pytest.mark.slow
def test_steps_per_call_trains_through_the_loop_like_single_steps(tmp_path):
    config = tiny_ddpm_config(num_steps=10, log_every=5, checkpoint_every=10)
    config.optim.eps = ADAM_EPS
    runs = {}
    for k in (1, 3):
        config.training.steps_per_call = k
        runs[k], _ = train(config, str(tmp_path / f"k{k}"))
    assert int(runs[3].step) == 10
    _assert_trees_close(runs[1].params, runs[3].params, rtol=1e-5, atol=1e-6)
    logs = [workdir_io.read_metrics(str(tmp_path / f"k{k}")) for k in (1, 3)]
    assert [r["step"] for r in logs[1]] == [5, 10]
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    config.training.steps_per_call = 0
    with pytest.raises(ConfigError, match="steps_per_call must be >= 1"):
        train(config, str(tmp_path / "bad"))


@pytest.mark.slow
@pytest.mark.devices(8)
def test_checkpoint_from_8_devices_restores_on_2_and_1_and_continues_equal(tmp_path):
    """Saved FSDP-sharded on 8 devices, restored onto 2 (FSDP) and onto 1, trained on."""
    config = tiny_ddpm_config(num_steps=2, checkpoint_every=2, batch_size=16)
    config.optim.eps = ADAM_EPS
    saved = tmp_path / "saved"
    train(config, str(saved), parallel.make_mesh(data=4, fsdp=2))
    config.training.num_steps = 4
    finals = {}
    for devices, fsdp in ((2, 2), (1, 1)):
        workdir = tmp_path / f"on_{devices}"
        shutil.copytree(saved, workdir)
        mesh = parallel.make_mesh(jax.devices()[:devices], fsdp=fsdp)
        finals[devices], _ = train(config, str(workdir), mesh)
        assert int(finals[devices].step) == 4
    _assert_trees_close(finals[2].params, finals[1].params)
    _assert_trees_close(finals[2].ema_params, finals[1].ema_params)


@pytest.mark.slow
def test_remat_gives_the_same_gradients_and_parameter_tree():
    x, t = jnp.ones((2, 8, 8, 1)), jnp.full((2,), 3.0)
    plain, remat = UNet(**TINY_MODEL), UNet(remat=True, **TINY_MODEL)
    params = plain.init(jax.random.key(0), x, t)
    assert jax.tree.structure(params) == jax.tree.structure(remat.init(jax.random.key(0), x, t))
    grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x, t) ** 2))(params)  # noqa: E731
    _assert_trees_close(grad(plain), grad(remat), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_bfloat16_compute_changes_the_output_only_by_bf16_rounding():
    """bf16 compute with the same float32 parameters: the relative error of the output is of
    the order of bf16's precision (2^-8 per operation), far below the output's scale."""
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    t = jnp.array([1.0, 10.0, 50.0, 90.0])
    kwargs = dict(TINY_MODEL, attn_resolutions=(4,))
    params = jax.jit(UNet(**kwargs).init)(jax.random.key(2), x, t)
    params = jax.jit(lambda params: jax.tree.map(  # non-zero output layer
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), params))(params)
    out32 = jax.jit(UNet(**kwargs).apply)(params, x, t)  # jitted: eager dispatch compiles each op
    out16 = jax.jit(UNet(dtype=jnp.bfloat16, **kwargs).apply)(params, x, t)
    assert out16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 1e-5 < rel < 3e-2


@pytest.mark.slow
@pytest.mark.devices(8)
def test_fast_training_path_follows_the_plain_one_to_bf16_rounding():
    """The benchmarked path (bf16 compute, remat, 2 steps per jitted call, FSDP 2 x 4) against
    the plain one (float32, single steps, data parallel) from the same initial parameters and
    data: the per-step losses agree to bf16 rounding of the network, not more."""
    rng = np.random.default_rng(0)
    batches = {"image": rng.uniform(-1, 1, (4, 16, 8, 8, 1)).astype(np.float32),
               "label": rng.integers(0, 10, (4, 16)).astype(np.int32)}

    def losses(dtype, remat, k, mesh):
        config = tiny_ddpm_config()
        config.model.update(dtype=dtype, remat=remat, attn_resolutions=(4,))
        method, optimizer = builders.build_method(config), make_optimizer(config.optim)
        shardings = jax.tree.map(lambda s: s.sharding, abstract_state(method, optimizer, mesh))
        step = jit_train_step(method, optimizer, 0.9, mesh, shardings, steps_per_call=k)
        state, out = initial_state(method, optimizer, 0, mesh), []
        for i in range(0, 4, k):
            chunk = jax.tree.map(lambda x: x[i:i + k] if k > 1 else x[i], batches)
            state, metrics = step(state, parallel.global_batch(chunk, mesh, int(k > 1)))
            out.extend(np.atleast_1d(np.asarray(metrics["loss"])).tolist())
        return np.asarray(out)

    plain = losses("float32", False, 1, parallel.make_mesh())
    fast = losses("bfloat16", True, 2, parallel.make_mesh(data=2, fsdp=4))
    rel = np.abs(fast - plain) / plain
    assert plain[-1] < plain[0]  # it trains
    assert rel.max() < 2e-2 and rel.max() > 0  # bf16 rounding: small, but not bit-identical
