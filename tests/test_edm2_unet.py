"""The EDM2 U-Net against NVlabs/edm2: outputs on the reference fixtures, parameter counts of
the paper's presets, the importer, and the network's own conventions."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import preconditioning
from diffusion_jax.errors import ConfigError
from diffusion_jax.importers.edm2 import import_precond
from diffusion_jax.models.edm2_unet import EDM2UNet, preset_kwargs
from diffusion_jax.models.mp_layers import fourier_constants, force_weight_norm
from diffusion_jax.model_size import count_params

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# Official integers: sum of p.numel() over NVlabs' Precond(64, C, L, model_channels=...)
# .parameters() (unet + logvar_linear), computed with networks_edm2.py at 4bf8162.
OFFICIAL_COUNTS = {  # size: (img512 64x64x4 cond, img64 64x64x3 cond, 64x64x4 uncond)
    "xxs": (31_309_029, 31_307_877, 31_053_029),
    "xs": (124_713_253, 124_710_949, 124_201_253),
    "s": (280_212_837, 280_209_381, 279_444_837),
    "m": (497_807_781, 497_803_173, 496_783_781),
    "l": (777_498_085, 777_492_325, 776_218_085),
    "xl": (1_119_283_749, 1_119_276_837, 1_117_747_749),
    "xxl": (1_523_164_773, 1_523_156_709, 1_521_372_773),
}
VARIANTS = {"img512": (4, 1000), "img64": (3, 1000), "uncond": (4, 0)}
IMG64_SIZES = ("xs", "s", "m", "l", "xl")  # NVlabs' img64 presets
DEFAULT_SUITE = {"img512": tuple(OFFICIAL_COUNTS), "img64": ("s",), "uncond": ("xs",)}
CASES = [pytest.param(size, variant, counts[i], id=f"{size}-{variant}",
                      marks=() if size in DEFAULT_SUITE[variant] else pytest.mark.slow)
         for size, counts in OFFICIAL_COUNTS.items() for i, variant in enumerate(VARIANTS)
         if variant != "img64" or size in IMG64_SIZES]


def n_params(model, channels, num_classes):
    cond = jnp.zeros((1,), jnp.int32) if num_classes else None
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, channels)),
                                               jnp.zeros((1,)), cond))
    assert set(shapes) == {"params"}  # the Fourier constants are not variables
    return count_params(shapes["params"])


@pytest.mark.parametrize("size,variant,expected", CASES)
def test_preset_parameter_counts_equal_nvlabs(size, variant, expected):
    channels, num_classes = VARIANTS[variant]
    assert n_params(EDM2UNet(**preset_kwargs(size, num_classes)), channels, num_classes) == expected


def test_paper_sizes_round_to_the_published_millions():
    published = {"xs": 124.7, "s": 280.2, "m": 497.8, "l": 777.5, "xl": 1119.3, "xxl": 1523.2}
    for size, millions in published.items():
        assert round(OFFICIAL_COUNTS[size][0] / 1e6, 1) == millions


def test_presets_set_width_and_dropout_and_reject_unknown_sizes():
    assert preset_kwargs("m") == dict(model_channels=256, dropout=0.1, num_classes=1000)
    assert preset_kwargs("xs", 0)["dropout"] == 0.0
    with pytest.raises(ConfigError, match="valid: l, m, s, xl, xs, xxl, xxs"):
        preset_kwargs("xxxl")


# The fixtures' networks (tools/make_edm2_fixtures.py TINY, COND, UNCOND).
TINY = dict(model_channels=8, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(8,),
            channels_per_head=4, logvar_channels=16)
FIXTURES = {
    "cond": dict(TINY, num_classes=10, channel_mult_noise=2, channel_mult_emb=3,
                 label_balance=0.3, concat_balance=0.6, res_balance=0.4, attn_balance=0.2,
                 clip_act=2.0),
    "uncond": dict(TINY, channel_mult=(1, 2), num_blocks=1, attn_resolutions=()),
}


@functools.lru_cache(None)
def fixture(name):
    data = dict(np.load(os.path.join(DATA, f"edm2_unet_{name}.npz")))
    state_dict = {k: v for k, v in data.items() if k.startswith(("unet.", "logvar_"))}
    return data, state_dict


@functools.lru_cache(None)
def apply_fn(name, dtype=jnp.float32):
    """jit of (variables, x_in, c_noise, cond) -> (F, u) of the fixture's network."""
    model = EDM2UNet(**FIXTURES[name], dtype=dtype)
    return jax.jit(lambda v, x, c, cond: model.apply(v, x, c, cond, return_logvar=True))


def network_inputs(data):
    """(c_in x, c_noise) of EDM's preconditioning, sigma_data 0.5."""
    c = preconditioning.EDMPrecond(0.5)(jnp.asarray(data["sigma"]))
    return c.c_in[:, None, None, None] * jnp.asarray(data["x"]), c.c_noise


@pytest.mark.parametrize("name", list(FIXTURES))
def test_imported_weights_fill_exactly_our_parameter_tree(name):
    data, state_dict = fixture(name)
    variables = import_precond(state_dict)
    model = EDM2UNet(**FIXTURES[name])
    cond = jnp.asarray(data["labels"]) if "labels" in data else None
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(data["x"]),
                                               jnp.asarray(data["sigma"]), cond))["params"]
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(shapes)
    assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(jnp.shape, shapes)
    assert set(variables["constants"]) == {"emb_fourier", "logvar_fourier"}


@pytest.mark.parametrize("name", list(FIXTURES))
def test_network_equals_nvlabs_unet_and_logvar(name):
    # measured max abs error: cond 1.9e-6 (F, max |F| 6.4), 2.6e-6 (F_null), 2.4e-7 (u);
    # uncond 2.6e-6 (F, max |F| 4.3), 1.2e-7 (u)
    data, state_dict = fixture(name)
    variables = import_precond(state_dict)
    x_in, c_noise = network_inputs(data)
    cond = jnp.asarray(data["labels"]) if "labels" in data else None
    F, u = apply_fn(name)(variables, x_in, c_noise, cond)
    np.testing.assert_allclose(F, data["F"], atol=2e-5, rtol=0)
    np.testing.assert_allclose(u, data["logvar"], atol=2e-6, rtol=0)
    assert F.dtype == jnp.float32 and u.shape == (2,)
    if cond is not None:
        # our null label num_classes (and cond None) is NVlabs' all-zero one-hot
        np.testing.assert_allclose(apply_fn(name)(variables, x_in, c_noise, None)[0],
                                   data["F_null"], atol=2e-5, rtol=0)
        null = jnp.full((2,), FIXTURES[name]["num_classes"])
        np.testing.assert_allclose(apply_fn(name)(variables, x_in, c_noise, null)[0],
                                   data["F_null"], atol=2e-5, rtol=0)
        assert np.abs(data["F"] - data["F_null"]).max() > 1e-2  # the labels matter


@pytest.mark.parametrize("name", list(FIXTURES))
def test_edm_preconditioning_of_the_network_equals_nvlabs_precond(name):
    data, state_dict = fixture(name)
    variables = import_precond(state_dict)
    cond = jnp.asarray(data["labels"]) if "labels" in data else None
    F = lambda x, c_noise, cond=None: apply_fn(name)(variables, x, c_noise, cond)[0]  # noqa: E731
    D = preconditioning.precondition(F, preconditioning.EDMPrecond(0.5))
    np.testing.assert_allclose(D(jnp.asarray(data["x"]), jnp.asarray(data["sigma"]), cond),
                               data["D"], atol=2e-5, rtol=0)


def test_forced_weight_norm_leaves_the_function_unchanged():
    # NVlabs' fixture weights are N(0, 1), not normalised: the forward pass normalises anyway
    data, state_dict = fixture("cond")
    variables = import_precond(state_dict)
    normalized = dict(variables, params=force_weight_norm(variables["params"]))
    x_in, c_noise = network_inputs(data)
    cond = jnp.asarray(data["labels"])
    np.testing.assert_allclose(apply_fn("cond")(normalized, x_in, c_noise, cond)[0], data["F"],
                               atol=2e-4, rtol=0)


def test_fourier_constants_come_from_the_seed_unless_passed():
    data, state_dict = fixture("uncond")
    variables = import_precond(state_dict)
    x_in, c_noise = network_inputs(data)
    model = EDM2UNet(**FIXTURES["uncond"], fourier_seed=5)
    own = jax.jit(lambda p: model.apply({"params": p}, x_in, c_noise, return_logvar=True))(
        variables["params"])
    # the same as passing fourier_constants(seed 5) and (seed 6, the log-variance head)
    seeded = {"emb_fourier": fourier_constants(8, 5), "logvar_fourier": fourier_constants(16, 6)}
    seeded = {k: dict(zip(("freqs", "phases"), v)) for k, v in seeded.items()}
    explicit = apply_fn("uncond")(dict(variables, constants=seeded), x_in, c_noise, None)
    for a, b in zip(own, explicit):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # negative control: NVlabs' own constants give another function
    assert np.abs(own[0] - data["F"]).max() > 1e-2


def test_initial_network_outputs_zero():
    # emb_gain and out_gain start at 0, on the smallest U-Net (compiling init is slow on CPU)
    model = EDM2UNet(model_channels=4, channel_mult=(1,), num_blocks=1, attn_resolutions=(),
                     logvar_channels=4, num_classes=3)
    x, c_noise, cond = jnp.ones((2, 4, 4, 3)), jnp.array([-0.3, 0.4]), jnp.array([0, 2])
    params = jax.jit(model.init)(jax.random.key(1), x, c_noise, cond)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert float(params["out_gain"]) == 0.0 and float(params["dec_4x4_in0"]["emb_gain"]) == 0.0
    F, u = jax.jit(functools.partial(model.apply, return_logvar=True))(
        {"params": params}, x, c_noise, cond)
    assert float(jnp.abs(F).max()) == 0.0 and float(jnp.abs(u).max()) > 0.0


def test_bfloat16_compute_is_close_and_outputs_float32():
    data, state_dict = fixture("uncond")
    x_in, c_noise = network_inputs(data)
    F, u = apply_fn("uncond", jnp.bfloat16)(import_precond(state_dict), x_in, c_noise, None)
    assert F.dtype == jnp.float32 and u.dtype == jnp.float32
    rel = float(jnp.linalg.norm(F - data["F"]) / np.linalg.norm(data["F"]))
    assert rel < 0.05, rel  # measured 0.010
    np.testing.assert_allclose(u, data["logvar"], atol=2e-6)  # u stays float32


@functools.lru_cache(None)
def train_fn(dropout, remat):
    model = EDM2UNet(**FIXTURES["uncond"], dropout=dropout, remat=remat)
    return jax.jit(lambda v, x, c, key: model.apply(v, x, c, None, train=True,
                                                    rngs={"dropout": key}))


def test_train_mode_differs_only_by_dropout():
    data, state_dict = fixture("uncond")
    variables = import_precond(state_dict)
    x_in, c_noise = network_inputs(data)
    key = jax.random.key(0)
    # NVlabs' training mode differs by dropout and its in-place weight normalisation, which we
    # do after the optimiser step (force_weight_norm); remat recomputes, it changes nothing
    np.testing.assert_allclose(train_fn(0.0, True)(variables, x_in, c_noise, key), data["F"],
                               atol=2e-5, rtol=0)
    dropped = train_fn(0.5, False)(variables, x_in, c_noise, key)
    assert np.abs(dropped - data["F"]).max() > 1e-2
    other = train_fn(0.5, False)(variables, x_in, c_noise, jax.random.key(1))
    assert np.abs(other - dropped).max() > 1e-3
