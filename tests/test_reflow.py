"""Reflow (Liu et al. 2023): 2-rectified flows are straighter than 1-rectified ones on a 2-D
mixture, measured by their straightness; the pairs are the flow's own ODE samples of their
noise; the launcher writes them and trains on them; distillation on the pairs (RectifiedFlow's
k-step grid, one-step LPIPS) learns the coupling's map in one Euler step."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import launch_one_device, write_random_lpips_weights

from configs.flow import (cifar10_rectified_flow_distill, digits_rectified_flow,
                          digits_rectified_flow_distill)
from diffusion_jax import analytic, builders, parallel, reflow, runs
from diffusion_jax.data import cache as data_cache
from diffusion_jax.errors import ConfigError
from diffusion_jax.losses import lpips
from diffusion_jax.methods.flow import Flow, distill_times
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
    distilled = str(tmp_path / "distilled")  # one-step distillation of the second flow
    result = launch_one_device(
        "--config=configs/flow/digits_rectified_flow_distill.py",
        *[a for a in common[1:] if "sampling.num_steps" not in a], f"--workdir={distilled}",
        f"--config.flow.coupling_dir={coupling}", f"--config.training.init_from={second}")
    assert result.returncode == 0, result.stderr[-3000:]
    _, method, _ = restore_run(distilled, parallel.make_mesh(jax.devices()[:1]))
    assert method.coupled and method.distill_steps == 1
    assert os.path.exists(os.path.join(distilled, "samples", "step_4.npz"))


def test_distillation_trains_on_rectified_flows_k_step_grid_only():
    """RectifiedFlow `reflow_t_schedule`: 't0' (k = 1) trains at t_L = eps, an integer k at
    t_L = j (1 - eps) / k + eps, j < k; in our time t = 1 - t_L. Every grid time is drawn."""
    eps = 1e-3
    np.testing.assert_allclose(distill_times(1, eps), [1 - eps])
    theirs = [1 - (j * (1 - eps) / 4 + eps) for j in range(4)]
    np.testing.assert_allclose(distill_times(4, eps), theirs, rtol=1e-6)
    method = Flow(model=MLP(), image_shape=(1, 1, 2), coupled=True, distill_steps=4,
                  train_eps=eps)
    t = np.asarray(method.sample_t(jax.random.key(0), 4096))
    np.testing.assert_allclose(np.unique(t), sorted(theirs), rtol=1e-6)


class TinyConv(nn.Module):
    """A velocity network on small one-channel images, for the LPIPS loss."""

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        h = nn.Conv(4, (3, 3))(x) + t[:, None, None, None]
        return nn.Conv(x.shape[-1], (3, 3))(jnp.tanh(h))


@pytest.mark.slow
def test_one_step_lpips_distillation_loss_by_value(tmp_path):
    """'lpips': the batch mean of LPIPS(eps - F(x_t, t), x) at t = 1 - train_eps, the one-step
    sample from the noise itself (RectifiedFlow's `z0 + score`); 'lpips+l2' adds the velocity's
    squared error (eps - x is the target). The weights come from flow.lpips_weights. A large
    train_eps (0.3) separates eps - F from the Euler step x_t - t F of the negative control."""
    path = str(tmp_path / "lpips.npz")
    weights = write_random_lpips_weights(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    eps = rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
    batch = {"image": jnp.asarray(np.concatenate([x, eps], -1))}
    distance = lpips.lpips_distance_fn(weights, resize_to=16)
    t = jnp.full((3, 1, 1, 1), 1.0 - 0.3)
    losses = {}
    for loss_name in ("lpips", "lpips+l2"):
        method = Flow(model=TinyConv(), image_shape=(8, 8, 1), coupled=True, distill_steps=1,
                      distill_loss=loss_name, lpips_weights=path, lpips_resize=16,
                      train_eps=0.3)
        params = method.init_params(jax.random.key(1))
        _, aux = method.start(params, method.init_aux(params, jax.random.key(2)),
                              runs.resolve(method.requirements(), None, {}))
        losses[loss_name] = float(jax.jit(
            lambda p: method.loss(p, batch, jax.random.key(3), aux)[0])(params))
    F = method.apply(params, (1 - t) * x + t * eps, t.reshape(-1))
    perceptual = float(jnp.mean(distance(eps - F, x)))
    np.testing.assert_allclose(losses["lpips"], perceptual, rtol=1e-4)
    np.testing.assert_allclose(losses["lpips+l2"],
                               perceptual + float(jnp.mean((F - (eps - x)) ** 2)), rtol=1e-4)
    # negative control: the same check on the sample x_t - t F (an Euler step from x_t, not
    # RectifiedFlow's from eps) fails
    other = float(jnp.mean(distance((1 - t) * x + t * (eps - F), x)))
    assert abs(other - perceptual) > 1e-2 * perceptual


def test_distillation_config_errors_are_one_line():
    """Unknown losses, LPIPS for k > 1 or off the velocity / linear path, a distillation with no
    pairs or no LPIPS weights file: ConfigErrors naming the key."""
    def build(**flow):
        config = digits_rectified_flow_distill.get_config()
        config.flow.update(**flow)
        return builders.build_method(config)

    with pytest.raises(ConfigError, match="flow.distill_loss"):
        build(distill_loss="lpips2")
    with pytest.raises(ConfigError, match="distill_steps=1"):
        build(distill_loss="lpips", distill_steps=2)
    with pytest.raises(ConfigError, match="velocity"):
        build(distill_loss="lpips", prediction="noise")
    with pytest.raises(ConfigError, match="flow.lpips_weights"):
        build(distill_loss="lpips", lpips_weights="/nonexistent/lpips.npz")
    latent = digits_rectified_flow_distill.get_config()
    latent.flow.distill_loss = "lpips"
    latent.latent.vae = "sd-vae-ft-mse"
    with pytest.raises(ConfigError, match="flow on pixels"):
        builders.build_method(latent)
    method = build()  # no flow.coupling_dir: the run cannot start
    with pytest.raises(ConfigError, match="coupling_dir"):
        method.init_aux(None, jax.random.key(0))
    method = build(coupling_dir="pairs", distill_loss="lpips")
    with pytest.raises(ConfigError, match="needs flow.lpips_weights"):
        method.init_aux(None, jax.random.key(0))
    assert not build(coupling_dir="pairs").requirements()  # l2: no weights needed
    plain = builders.build_method(digits_rectified_flow.get_config())
    assert plain.distill_steps == 0 and plain.init_aux(None, jax.random.key(0)) == {}
    # RectifiedFlow's distill_k=1 setting: t0, LPIPS at 224, one Euler step
    config = cifar10_rectified_flow_distill.get_config()
    method = builders.build_method(config)
    assert (method.distill_steps, method.distill_loss, method.lpips_resize) == (1, "lpips", 224)
    assert method.train_eps == 1e-3 and method.time_scale == 999.0
    sampler = builders.build_sampler(config, method)
    assert (sampler.method, sampler.num_steps) == ("flow_euler", 1)


@pytest.mark.slow
def test_one_step_distillation_learns_the_coupling_map():
    """Pairs (g(eps), eps) of a deterministic, discontinuous map g (a component picked by the
    sign of eps_1): after distillation at t = 1 (`distill_steps=1`) one Euler step from eps
    gives g(eps), mean squared error under 2% of Var(g). Negative control: the same check
    rejects the model distilled on the noise shuffled against the samples (an independent
    coupling, whose one-step sample is the data mean)."""
    means = jnp.array([[-2.0, 1.0], [2.0, -1.0]])
    g = lambda e: means[(e[:, 0] > 0).astype(jnp.int32)] + 0.3 * e  # noqa: E731
    n = 8192
    eps = jax.random.normal(jax.random.key(0), (n, 2))
    pairs = jnp.concatenate([g(eps), eps], -1).reshape(n, 1, 1, 4)
    shuffled = jnp.concatenate([g(eps), eps[jax.random.permutation(jax.random.key(1), n)]],
                               -1).reshape(n, 1, 1, 4)
    method = Flow(model=MLP(), image_shape=(1, 1, 2), coupled=True, distill_steps=1)
    pick = lambda k: jax.random.randint(jax.random.fold_in(jax.random.key(3), k), (512,), 0, n)
    sampler = method.sampler(method="flow_euler", num_steps=1)
    noise = jax.random.normal(jax.random.key(6), (4096, 1, 1, 2))
    target = g(noise.reshape(-1, 2))
    errors = {}
    for name, data in (("distilled", pairs), ("shuffled", shuffled)):
        params = train(method, lambda k, data=data: {"image": data[pick(k)]}, steps=1500)
        x, stats = method.sample(params, jax.random.key(0), noise, None, aux={},
                                 sampler=sampler)
        assert float(stats["nfe"]) == 1
        errors[name] = float(jnp.mean((x.reshape(-1, 2) - target) ** 2))
    variance = float(jnp.mean(jnp.var(target, 0)))
    print(errors, variance)
    assert errors["distilled"] < 0.02 * variance
    assert errors["shuffled"] > 0.5 * variance
