"""The DiT backbone (diffusion_jax/models/dit.py) against the official code: parameter counts
of every preset, forward FLOPs, outputs equal to the official DiT (PyTorch) and MeanFlow (JAX)
networks on fixtures with random weights (tools/make_dit_fixtures.py), the h = t - r embedding,
forward-mode differentiation through the whole network, remat and bf16 compute."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.errors import ConfigError
from diffusion_jax.model_size import count_flops
from diffusion_jax.importers import dit as importer
from diffusion_jax.models.dit import DiT, PRESETS, SIZES, sincos_2d
from helpers import random_params

DATA = os.path.join(os.path.dirname(__file__), "data")
LATENT = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)  # 256x256 images in the SD VAE
T = jax.ShapeDtypeStruct((1,), jnp.float32)
Y = jax.ShapeDtypeStruct((1,), jnp.int32)

# Trainable parameters of the official networks at 32x32x4 with 1000 classes, counted by
# instantiating them: DiT's models.py (learn_sigma=True; `sum(p.numel() for p in
# DiT_models[name](input_size=32).parameters() if p.requires_grad)`, torch 2.13, timm 1.0.31)
# and MeanFlow's models_dit.py (learn_sigma=False, with h_embedder; leaves of
# `jax.eval_shape(model.init, ...)`).
DIT_COUNTS = {
    "DiT-S/2": 32_865_056, "DiT-S/4": 32_920_448, "DiT-S/8": 33_142_016,
    "DiT-B/2": 130_315_808, "DiT-B/4": 130_426_496, "DiT-B/8": 130_869_248,
    "DiT-L/2": 457_840_672, "DiT-L/4": 457_988_224, "DiT-L/8": 458_578_432,
    "DiT-XL/2": 674_834_720, "DiT-XL/4": 675_000_704, "DiT-XL/8": 675_664_640,
}
MEANFLOW_COUNTS = {
    "DiT-S/2": 33_105_424, "DiT-S/4": 33_142_336, "DiT-S/8": 33_289_984,
    "DiT-B/2": 131_091_472, "DiT-B/4": 131_165_248, "DiT-B/8": 131_460_352,
    "DiT-M/2": 308_019_216, "DiT-M/4": 308_117_568, "DiT-M/8": 308_510_976,
    "DiT-L/2": 459_137_040, "DiT-L/4": 459_235_392, "DiT-L/8": 459_628_800,
    "DiT-XL/2": 676_440_592, "DiT-XL/4": 676_551_232, "DiT-XL/8": 676_993_792,
}


def _count(model) -> int:
    shapes = jax.eval_shape(model.init, jax.random.key(0), LATENT, T, Y)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize("preset", list(DIT_COUNTS))
def test_dit_presets_have_the_official_parameter_counts(preset):
    assert _count(DiT(preset=preset, num_classes=1000, learn_sigma=True)) == DIT_COUNTS[preset]


@pytest.mark.parametrize("preset", list(MEANFLOW_COUNTS))
def test_meanflow_dits_have_the_official_parameter_counts(preset):
    """MF-XL/2 676.4M, MF-B/4 131.2M: the same backbone with the h embedder, no learned sigma."""
    model = DiT(preset=preset, num_classes=1000, h_embedding=True)
    assert _count(model) == MEANFLOW_COUNTS[preset]


def test_presets_are_the_papers_sizes():
    assert set(PRESETS) == {f"DiT-{s}/{p}" for s in SIZES for p in (2, 4, 8)}
    assert PRESETS["DiT-XL/2"] == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
    assert PRESETS["DiT-S/8"] == dict(depth=12, hidden_size=384, num_heads=6, patch_size=8)


@pytest.mark.parametrize("preset, gmacs", [("DiT-XL/2", 118.62), ("DiT-B/4", 5.57),
                                           ("DiT-S/8", 0.36)])
def test_forward_flops_are_the_matrix_products_of_the_architecture(preset, gmacs):
    """The program's FLOPs (multiply-add = 2) are those of its matrix products, counted here by
    layer (per block qkv, proj, MLP 12 N D^2, attention 2 N^2 D, adaLN 6 D^2), and DiT's
    'Gflops' (MACs: 118.6 for XL/2 at 256x256, its README's 119)."""
    model = DiT(preset=preset, num_classes=1000, learn_sigma=True)
    params = jax.eval_shape(model.init, jax.random.key(0), LATENT, T, Y)
    flops = count_flops(lambda p, x, t, y: model.apply(p, x, t, y), params, LATENT, T, Y)
    a = PRESETS[preset]
    d, p, n = a["hidden_size"], a["patch_size"], (32 // a["patch_size"]) ** 2
    macs = (n * p * p * 4 * d + 256 * d + d * d
            + a["depth"] * (12 * n * d * d + 2 * n * n * d + 6 * d * d)
            + 2 * d * d + n * d * p * p * 8)
    assert flops == 2 * macs
    assert round(macs / 1e9, 2) == gmacs  # FRONTIER.md's table, computed from the layers


def test_initialisation_is_dits():
    """DiT's initialize_weights: Xavier-uniform linears with zero biases, the patch embedding as
    the linear map p p C -> D, N(0, 0.02^2) timestep MLP and label table, zero adaLN and output
    layers. Negative control: patch_init='conv' (fans p p C and p p D) fails the patch check."""
    model = DiT(patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=1000)
    x, t, y = np.zeros((1, 16, 16, 4), np.float32), np.zeros(1), np.zeros(1, int)
    params = jax.jit(model.init)(jax.random.key(0), x, t, y)["params"]
    var = lambda a: float(np.var(np.asarray(a)))  # noqa: E731
    close = lambda v, want: abs(v / want - 1) < 0.1  # noqa: E731
    assert close(var(params["x_embedder"]["kernel"]), 2 / (16 + 64))
    for layer, (fan_in, fan_out) in (("qkv", (64, 192)), ("proj", (64, 64))):
        assert close(var(params["blocks_0"]["attn"][layer]["kernel"]), 2 / (fan_in + fan_out))
    assert close(var(params["blocks_1"]["mlp"]["fc1"]["kernel"]), 2 / (64 + 256))
    for name in ("mlp_0", "mlp_2"):
        assert close(var(params["t_embedder"][name]["kernel"]), 0.02**2)
    assert close(var(params["y_embedder"]["embedding"]), 0.02**2)
    zero = [params["blocks_0"]["adaLN_modulation"], params["final_layer"]["adaLN_modulation"],
            params["final_layer"]["linear"], {"b": params["blocks_1"]["attn"]["qkv"]["bias"]}]
    assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(zero))
    conv = jax.jit(model.clone(patch_init="conv").init)(jax.random.key(0), x, t, y)["params"]
    assert not close(var(conv["x_embedder"]["kernel"]), 2 / (16 + 64))
    assert close(var(conv["x_embedder"]["kernel"]), 2 / (16 + 4 * 64))


def _fixture(name):
    f = np.load(os.path.join(DATA, name))
    weights = {k[len("param:"):]: f[k] for k in f.files if k.startswith("param:")}
    return weights, {k: f[k] for k in f.files if not k.startswith("param:")}


TINY = dict(patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def test_the_official_dit_output_is_reproduced_to_float32_rounding():
    """Official DiT models.py (learn_sigma, random weights, float64) on x, t, y (the second
    label the null class) against ours in float32 with the imported state dict."""
    state, io = _fixture("dit_official.npz")
    model = DiT(**TINY, learn_sigma=True)
    params = importer.from_state_dict(state)
    shapes = jax.eval_shape(model.init, jax.random.key(0), io["x"], io["t"], io["y"])["params"]
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, params)
    out = np.asarray(model.apply({"params": params}, io["x"], io["t"], io["y"]))
    scale = np.abs(io["out"]).max()
    assert out.shape == io["out"].shape == (2, 8, 8, 8) and scale > 1.0
    np.testing.assert_allclose(out, io["out"], rtol=1e-5, atol=1e-5 * scale)  # measured 1.0e-6

    def changed(path, fn):  # negative controls: one tensor mis-mapped changes the output
        bad = jax.tree_util.tree_map_with_path(
            lambda p, v: fn(v) if jax.tree_util.keystr(p) == path else v, params)
        return np.abs(np.asarray(model.apply({"params": bad}, io["x"], io["t"], io["y"]))
                      - io["out"]).max() / scale
    assert changed("['blocks_0']['attn']['proj']['kernel']", np.transpose) > 1e-2
    assert changed("['x_embedder']['kernel']", lambda k: k.transpose(1, 0, 2, 3)) > 1e-2
    assert changed("['blocks_1']['adaLN_modulation']['kernel']", lambda k: k[::-1]) > 1e-2


def test_the_position_embedding_is_dits_fixed_sincos_table():
    """Column in the first half of the channels, row in the second (DiT's meshgrid puts w
    first); the rows-first table is rejected by the same comparison."""
    state, _ = _fixture("dit_official.npz")
    official = state["pos_embed"][0]
    np.testing.assert_allclose(sincos_2d(4, 4, 32), official, atol=1e-6)
    rows_first = np.concatenate([sincos_2d(4, 4, 32)[:, 16:], sincos_2d(4, 4, 32)[:, :16]], 1)
    assert np.abs(rows_first - official).max() > 0.5


def test_the_official_meanflow_dit_output_is_reproduced_with_its_h_embedding():
    """MeanFlow's models_dit.py u(z, t, h, y) with h = t - r = (0.6, 0): ours with h equals
    it; h = None (h = 0) gives the same output for the example with h = 0 and another for the
    one with h = 0.6, so the h embedding is used and summed into the condition."""
    flat, io = _fixture("dit_meanflow.npz")
    model = DiT(**TINY, h_embedding=True)
    params = importer.from_meanflow(flat)
    out = np.asarray(model.apply({"params": params}, io["x"], io["t"], io["y"], h=io["h"]))
    scale = np.abs(io["out"]).max()
    np.testing.assert_allclose(out, io["out"], rtol=1e-5, atol=1e-5 * scale)  # measured 6e-7
    at_zero = np.asarray(model.apply({"params": params}, io["x"], io["t"], io["y"]))
    assert io["h"][1] == 0.0 and io["h"][0] > 0.0
    np.testing.assert_allclose(at_zero[1], io["out"][1], rtol=1e-5, atol=1e-5 * scale)
    assert np.abs(at_zero[0] - io["out"][0]).max() > 1e-2 * scale
    with pytest.raises(ValueError, match="h_embedding"):
        DiT(**TINY).apply({"params": {k: v for k, v in params.items() if k != "h_embedder"}},
                          io["x"], io["t"], io["y"], h=io["h"])


def test_importers_reject_keys_that_are_not_dit_parameters():
    from diffusion_jax.errors import CheckpointError

    state, _ = _fixture("dit_official.npz")
    with pytest.raises(CheckpointError, match="blocks.0.attn.q_norm.weight"):
        importer.from_state_dict({**state, "blocks.0.attn.q_norm.weight": np.ones(8)})


def _tiny_mean_flow(**kw):
    model = DiT(**TINY, h_embedding=True, **kw)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    t, h, y = np.array([0.8, 0.3], np.float32), np.array([0.5, 0.1], np.float32), np.array([1, 10])
    params = random_params(jax.eval_shape(model.init, jax.random.key(0), x, t, y), scale=0.15)
    return model, params, x, t, h, y


def test_jvp_through_the_whole_network_matches_finite_differences():
    """MeanFlow's d/dt u(z_t, t, r) = jvp with tangents (v, 1, 0) in (z, t, r), h = t - r,
    against a central difference of step 3e-3 (measured 1.2e-4 apart). Negative control: the
    tangent (v, 0, 0), which drops the t direction, is rejected by the same tolerance (0.27)."""
    model, params, x, t, h, y = _tiny_mean_flow()
    v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    r, eps = t - h, 3e-3

    def u(z, t, r):
        return model.apply(params, z, t, y, h=t - r)

    @jax.jit
    def derivatives():
        du = jax.jvp(u, (x, t, r), (v, jnp.ones(2), jnp.zeros(2)))[1]
        du_no_t = jax.jvp(u, (x, t, r), (v, jnp.zeros(2), jnp.zeros(2)))[1]
        fd = (u(x + eps * v, t + eps, r) - u(x - eps * v, t - eps, r)) / (2 * eps)
        return du, du_no_t, fd
    du, du_no_t, fd = derivatives()
    error = lambda a: float(jnp.max(jnp.abs(a - fd)) / jnp.max(jnp.abs(fd)))  # noqa: E731
    assert error(du) < 1e-3
    assert error(du_no_t) > 1e-3


@pytest.mark.slow
def test_remat_gives_the_same_outputs_gradients_and_tangents():
    model, params, x, t, h, y = _tiny_mean_flow()

    @jax.jit
    def evaluate(p):
        out = {}
        for name, m in (("plain", model), ("remat", model.clone(remat=True))):
            f = lambda p, z: m.apply(p, z, t, y, h=h)  # noqa: E731
            out[name] = (f(p, x), jax.grad(lambda p: jnp.sum(f(p, x) ** 2))(p),
                         jax.jvp(lambda z: f(p, z), (x,), (x,))[1])
        return out
    out = evaluate(params)
    for a, b in zip(jax.tree.leaves(out["remat"]), jax.tree.leaves(out["plain"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_bfloat16_compute_keeps_float32_parameters_and_output():
    model, params, x, t, h, y = _tiny_mean_flow()
    fast = model.clone(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(fast.init, jax.random.key(0), x, t, y)
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    out, ref = fast.apply(params, x, t, y, h=h), model.apply(params, x, t, y, h=h)
    assert out.dtype == jnp.float32
    rel = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert 0.0 < rel < 0.05  # measured 0.015


def test_learn_sigma_doubles_the_output_channels():
    x = np.zeros((1, 8, 8, 3), np.float32)
    for learn_sigma, channels in ((False, 3), (True, 6)):
        model = DiT(**TINY, learn_sigma=learn_sigma)
        shapes = jax.eval_shape(model.init, jax.random.key(0), x, np.zeros(1), np.zeros(1, int))
        out = jax.eval_shape(model.apply, shapes, x, np.zeros(1), np.zeros(1, int))
        assert out.shape == (1, 8, 8, channels)


def test_a_preset_is_a_config_key_and_a_contradicting_size_a_one_line_error():
    from ml_collections import ConfigDict

    from diffusion_jax import builders

    config = ConfigDict(dict(data=dict(dataset="digits"), model=dict(
        name="dit", preset="DiT-S/8", learn_sigma=True, class_conditional=True)))
    model = builders.build_model(config)
    assert model.architecture() == PRESETS["DiT-S/8"] and model.num_classes == 10
    assert DiT(preset="DiT-B/4", depth=12).architecture() == PRESETS["DiT-B/4"]
    for kwargs, match in ((dict(preset="DiT-XXL/2"), "DiT-XL/2"),
                          (dict(preset="DiT-B/4", depth=6), "depth"),
                          (dict(patch_init="xavier"), "linear")):
        with pytest.raises(ConfigError, match=match) as info:
            DiT(**kwargs)
        assert "\n" not in str(info.value)
