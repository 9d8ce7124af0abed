"""NCSN++ / DDPM++ (score SDE) and EDM's SongUNet settings: parameter counts and behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import ncsnpp
from diffusion_jax.models.ncsnpp import GaussianFourierProjection, NCSNpp, ResnetBlockBigGANpp
from diffusion_jax.model_size import count_params

PAPER_COUNTS = [  # /work/shared/REFERENCE.md, CIFAR-10 32x32x3
    ("DDPM++ cont.", ncsnpp.ddpmpp_cifar10_kwargs(), 61_804_419),
    ("DDPM++ cont. deep", ncsnpp.ddpmpp_cifar10_kwargs(deep=True), 106_632_579),
    ("NCSN++", ncsnpp.ncsnpp_cifar10_kwargs(continuous=False), 62_693_251),
    ("NCSN++ cont.", ncsnpp.ncsnpp_cifar10_kwargs(), 62_758_915),
    ("NCSN++ cont. deep", ncsnpp.ncsnpp_cifar10_kwargs(deep=True), 107_587_075),
    ("EDM NCSN++", ncsnpp.edm_ncsnpp_cifar10_kwargs(), 56_395_651),
]


def n_params(kwargs, shape=(1, 32, 32, 3)):
    model = NCSNpp(**kwargs)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.ones((1,))))
    return count_params(variables["params"])


@pytest.mark.parametrize("name,kwargs,expected", PAPER_COUNTS, ids=[c[0] for c in PAPER_COUNTS])
def test_paper_parameter_count(name, kwargs, expected):
    assert n_params(kwargs) == expected


def test_edm_ddpmpp_has_55_73_million_parameters():
    assert abs(n_params(ncsnpp.edm_ddpmpp_cifar10_kwargs()) - 55.73e6) <= 0.001 * 55.73e6


TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)
X = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
SIGMA = jnp.array([0.5, 2.0])


def random_params(model, *args):
    """Random parameters of the right shapes; cheaper to compile on CPU than `model.init`."""
    shapes = jax.eval_shape(lambda key: model.init(key, *args), jax.random.key(0))["params"]
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


# Every option value appears in one of these tiny nets (progressive 'none' in the fixture below).
OPTION_SETS = {
    "ddpm_fir_no_conv_output_skip_input_skip_cat_labels": dict(
        resblock_type="ddpm", fir=True, resamp_with_conv=False, progressive="output_skip",
        progressive_input="input_skip", progressive_combine="cat", num_classes=10),
    "ddpm_residual_pyramids_no_skip_rescale_uncentered": dict(
        resblock_type="ddpm", progressive="residual", progressive_input="residual", skip_rescale=False,
        centered=False),
    "biggan_fir_residual_pyramids_fourier_bfloat16": dict(
        fir=True, progressive="residual", progressive_input="residual", embedding_type="fourier",
        embed_log_t=True, dtype=jnp.bfloat16),
    "biggan_output_skip_input_skip_sum_unconditional": dict(
        progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
        conditional=False, out_channels=2),
}


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_forward_shape_dtype_and_finite(options):
    model = NCSNpp(**TINY, **options)
    cond = jnp.array([3, 7]) if options.get("num_classes") else None
    params = random_params(model, X, SIGMA, cond)
    out = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, cond))(params, X, SIGMA)
    assert out.shape == X.shape[:3] + (options.get("out_channels", 1),)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


@pytest.fixture(scope="module")
def fourier_net():
    """A class-conditional net with Fourier features of log sigma and no pyramids."""
    kwargs = dict(TINY, num_classes=10, embedding_type="fourier", embed_log_t=True)
    params = random_params(NCSNpp(**kwargs), X, SIGMA)
    return kwargs, params, jax.jit(lambda x, t, c: NCSNpp(**kwargs).apply({"params": params}, x, t, c))


def test_output_depends_on_t(fourier_net):
    _, _, apply = fourier_net
    same_x = jnp.repeat(X[:1], 2, axis=0)
    out = apply(same_x, SIGMA, jnp.array([3, 3]))
    assert not np.allclose(out[0], out[1], atol=1e-3)


def test_output_depends_on_the_label_and_none_means_the_null_label(fourier_net):
    _, _, apply = fourier_net
    same_x, same_t = jnp.repeat(X[:1], 2, axis=0), jnp.full((2,), 1.0)
    out = apply(same_x, same_t, jnp.array([3, 10]))
    assert not np.allclose(out[0], out[1], atol=1e-3)
    np.testing.assert_allclose(apply(same_x, same_t, None)[1], out[1], atol=1e-5)


def test_scale_by_sigma_divides_the_output_by_sigma(fourier_net):
    kwargs, params, apply = fourier_net
    labels = jnp.array([3, 7])
    scaled = jax.jit(NCSNpp(**kwargs, scale_by_sigma=True).apply)({"params": params}, X, SIGMA, labels)
    np.testing.assert_allclose(scaled, apply(X, SIGMA, labels) / SIGMA[:, None, None, None], rtol=1e-5)


def test_fourier_features_are_frozen_but_counted(fourier_net):
    _, params, _ = fourier_net
    assert params["fourier_proj"]["W"].shape == (TINY["nf"],)
    proj = GaussianFourierProjection(8, 16.0)
    w = proj.init(jax.random.key(0), SIGMA)
    grads = jax.grad(lambda v: jnp.sum(proj.apply(v, SIGMA)))(w)
    assert not np.any(grads["params"]["W"])


def test_dropout_is_active_only_in_training():
    block = ResnetBlockBigGANpp(8, dropout=0.5)
    h, emb = X[..., :1].repeat(8, -1), jnp.ones((2, 4))
    params = random_params(block, h, emb, False)
    run = jax.jit(lambda key, train: block.apply({"params": params}, h, emb, train, rngs={"dropout": key}),
                  static_argnums=1)
    np.testing.assert_array_equal(run(jax.random.key(1), False), run(jax.random.key(2), False))
    assert not np.allclose(run(jax.random.key(1), True), run(jax.random.key(2), True))


def test_without_cross_attention_the_parameters_are_unchanged():
    """188,769: the count of this net (configs/edm/digits.py) before cross_attention existed."""
    shapes = jax.eval_shape(NCSNpp(**TINY).init, jax.random.key(0), X, SIGMA)["params"]
    assert count_params(shapes) == 188_769
    assert not any(k.startswith("SpatialTransformer") or k == "context_emb" for k in shapes)


CONTEXT = jax.random.normal(jax.random.key(2), (2, 5, 8))
MASK = jnp.array([[True, True, True, False, False], [True] * 5])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_cross_attention_follows_the_context_and_ignores_masked_tokens(dtype):
    model = NCSNpp(**TINY, cross_attention=True, num_heads=2, dtype=dtype)
    params = random_params(model, X, SIGMA, {"context": CONTEXT, "mask": MASK})
    assert {k for k in params if k.startswith(("AttnBlockpp", "SpatialTransformer"))} == {
        "SpatialTransformer_0", "SpatialTransformer_1", "SpatialTransformer_2"}  # down, middle, up
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    apply = jax.jit(lambda p, context: model.apply({"params": p}, X, SIGMA,
                                                   {"context": context, "mask": MASK}))
    out = np.asarray(apply(params, CONTEXT))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_array_equal(apply(params, CONTEXT.at[0, 3:].set(100.0)), out)
    other_caption = CONTEXT.at[:, :3].multiply(-1.0)
    assert np.all(np.max(np.abs(apply(params, other_caption) - out), axis=(1, 2, 3)) > 1e-2)
    no_pooling = dict(params, context_emb=jax.tree.map(jnp.zeros_like, params["context_emb"]))
    assert np.all(np.max(np.abs(apply(no_pooling, other_caption) - apply(no_pooling, CONTEXT)),
                         axis=(1, 2, 3)) > 1e-2)  # through the cross-attention alone


def test_unknown_option_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="output_skip"):
        jax.eval_shape(NCSNpp(**TINY, progressive="skip").init, jax.random.key(0), X, SIGMA)
