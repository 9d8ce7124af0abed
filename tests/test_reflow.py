"""Reflow (Liu et al. 2023): 2-rectified flows are straighter than 1-rectified ones on a 2-D
mixture, measured by their straightness; the pairs are the flow's own ODE samples of their
noise; the launcher writes them and trains on them."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import launch_one_device

from diffusion_jax import analytic, parallel, reflow
from diffusion_jax.data import cache as data_cache
from diffusion_jax.methods.flow import Flow
from diffusion_jax.runs import restore_run

DATA = analytic.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, 1.0], [2.0, -1.0]]),
                                jnp.array([[[0.05, 0.0], [0.0, 0.2]]] * 2))


class MLP(nn.Module):
    """A velocity network on 2-D points stored as (1, 1, 2) images."""

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        h = jnp.concatenate([x.reshape(x.shape[0], 2), t[:, None], jnp.sin(3 * t[:, None]),
                             jnp.cos(3 * t[:, None])], -1)
        for _ in range(3):
            h = nn.silu(nn.Dense(128)(h))
        return nn.Dense(2)(h).reshape(x.shape)


def train(method, batches, steps=2500, seed=0):
    """Adam on `method.loss` over `batches(k) -> batch`; returns the parameters."""
    params = method.init_params(jax.random.key(seed))
    opt = optax.adam(3e-3)

    @jax.jit
    def run(params):
        def step(carry, k):
            params, state = carry
            loss, grads = jax.value_and_grad(
                lambda p: method.loss(p, batches(k), jax.random.fold_in(jax.random.key(1), k))[0]
            )(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss
        return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))[0][0]

    return run(params)


@pytest.mark.slow
def test_two_rectified_flows_are_straighter_than_one_rectified():
    """1-rectified: flow matching on independent (x, eps); its ODE pairs each noise with a
    sample (`reflow.make_pair_fn`); 2-rectified: the same training on those fixed pairs. Its
    straightness is under half the 1-rectified flow's. Negative control: the same pairs with the
    noise shuffled (an independent coupling again) give no such gain."""
    independent = Flow(model=MLP(), image_shape=(1, 1, 2))
    coupled = Flow(model=MLP(), image_shape=(1, 1, 2), coupled=True)
    mesh = parallel.make_mesh(jax.devices()[:1])
    data = lambda k: {"image": DATA.sample(jax.random.fold_in(jax.random.key(2), k),
                                           512).reshape(512, 1, 1, 2)}
    params1 = train(independent, data)

    sampler = independent.sampler(method="flow_heun", num_steps=32)
    n = 4096
    pairs = reflow.make_pair_fn(independent, mesh, sampler, n)(
        params1, {}, jax.random.key(5), jnp.arange(n, dtype=jnp.int32))
    x, eps = np.split(np.asarray(pairs), 2, axis=-1)
    direct, _ = independent.sample(params1, jax.random.key(0), jnp.asarray(eps[:8]), None,
                                   aux={}, sampler=sampler)
    np.testing.assert_allclose(x[:8], direct, rtol=1e-4, atol=1e-5)  # each pair: ODE(eps)

    pick = lambda k: jax.random.randint(jax.random.fold_in(jax.random.key(3), k), (512,), 0, n)
    pairs = jnp.asarray(pairs)
    params2 = train(coupled, lambda k: {"image": pairs[pick(k)]})
    shuffled = jnp.concatenate([pairs[..., :2], pairs[jax.random.permutation(
        jax.random.key(4), n)][..., 2:]], -1)
    params_shuffled = train(coupled, lambda k: {"image": shuffled[pick(k)]})

    noise = jax.random.normal(jax.random.key(6), (2048, 1, 1, 2))
    s = {name: float(reflow.straightness(independent.velocity_fn(p, None, sampler), noise))
         for name, p in (("1-rectified", params1), ("2-rectified", params2),
                         ("shuffled", params_shuffled))}
    print(s)
    assert s["2-rectified"] < 0.5 * s["1-rectified"]
    assert s["shuffled"] > 0.7 * s["1-rectified"]


def test_straightness_of_a_straight_and_a_curved_field():
    """A constant velocity has S = 0; v = (0, a t) on a grid of N steps has S = a^2 Var(t) with t
    uniform on the grid's left points: a^2 (N^2 - 1) / (12 N^2)."""
    x = jnp.ones((4, 1, 1, 2))
    assert float(reflow.straightness(lambda x, t: jnp.full(x.shape, 2.0), x, 8)) == 0.0
    a, steps = 3.0, 16
    field = lambda x, t: jnp.stack([jnp.zeros_like(t), a * t], -1).reshape(x.shape)
    expected = a**2 * (steps**2 - 1) / (12 * steps**2) / 2  # averaged over the 2 dimensions
    assert float(reflow.straightness(field, x, steps)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_the_launcher_writes_pairs_and_trains_the_reflowed_flow(tmp_path):
    """--mode=reflow_pairs from a tiny digits rectified flow writes pairs whose images are the
    flow's samples; a run with flow.coupling_dir trains on them from the first run's weights."""
    first, pairs_run, second = (str(tmp_path / d) for d in ("rf1", "pairs", "rf2"))
    coupling = str(tmp_path / "coupling")
    common = ["--config=configs/flow/digits_rectified_flow.py", "--config.model.nf=8",
              "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
              "--config.training.num_steps=4", "--config.training.batch_size=16",
              "--config.training.checkpoint_every=4", "--config.training.preview_samples=0",
              "--config.sampling.num_samples=4", "--config.sampling.batch_size=8",
              "--config.sampling.num_steps=4"]
    assert launch_one_device(*common, f"--workdir={first}").returncode == 0
    result = launch_one_device(*common, "--mode=reflow_pairs", f"--workdir={pairs_run}",
                               f"--train_workdir={first}", f"--config.flow.coupling_dir={coupling}",
                               "--config.reflow.num_pairs=20", "--config.reflow.shard_size=8")
    assert result.returncode == 0, result.stderr[-3000:]
    source = data_cache.CachedSource(coupling)
    assert len(source) == 20 and source[0]["image"].shape == (8, 8, 2)
    result = launch_one_device(*common, f"--workdir={second}", f"--config.flow.coupling_dir={coupling}",
                               f"--config.training.init_from={first}")
    assert result.returncode == 0, result.stderr[-3000:]
    _, method, _ = restore_run(second, parallel.make_mesh(jax.devices()[:1]))
    assert method.coupled and os.path.exists(os.path.join(second, "samples", "step_4.npz"))
