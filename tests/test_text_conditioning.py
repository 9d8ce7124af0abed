"""Text conditioning: byte tokens, the captioned shapes data set, cross-attention blocks, text
encoders, the U-Net, NCSN++ and DiT backbones, guidance by caption, and `--prompt` in sample
mode."""
import glob

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import launch_one_device, random_params

from configs.text import shapes_dit, shapes_edm, shapes_edm_ddpmpp
from diffusion_jax import builders, guidance, launcher, text
from diffusion_jax.data import shapes
from diffusion_jax.data.datasets import open_dataset
from diffusion_jax.data.loader import BatchLoader
from diffusion_jax.errors import ConfigError
from diffusion_jax.models.attention import SpatialTransformer
from diffusion_jax.models.text_encoder import PrecomputedTextEncoder

L = shapes.CAPTION_LENGTH


def tiny_text_config(base=shapes_edm):
    config = base.get_config()
    if config.model.name == "unet":
        config.model.update(ch=16, attn_resolutions=(), num_heads=2)
    elif config.model.name == "ncsnpp":
        config.model.update(nf=16, attn_resolutions=(), num_heads=2)
    else:
        config.model.update(hidden_size=32, depth=2, num_heads=2)
    config.text.update(width=32, num_layers=1, num_heads=2)
    return config


def test_tokens_round_trip_and_the_empty_caption_is_the_null_condition():
    tokens = text.tokenize("a red circle on the left", L)
    assert tokens.shape == (L,) and tokens.dtype == np.int32
    assert text.detokenize(tokens) == "a red circle on the left"
    assert (text.tokenize("", L) == text.PAD).all()
    assert guidance.null_condition(0, L) == text.PAD
    assert text.tokenize("x" * 40, L).shape == (L,)  # truncated


def test_shapes_are_deterministic_captioned_and_the_detectors_read_them():
    images, tokens, captions = shapes.load_shapes("test")
    assert images.shape == (512, 16, 16, 3) and tokens.shape == (512, L)
    assert images.min() >= -1 and images.max() <= 1
    again = shapes.draw("red", "circle", "on the left", np.random.default_rng([20261201, 1, 0]))
    assert captions[0].startswith("a ") and text.detokenize(tokens[0]) == captions[0]
    colour, position = shapes.attributes(captions)
    assert (shapes.colour_of(images) == colour).all()
    round_or_square = np.array(["triangle" not in c for c in captions])
    assert (shapes.colour_of(images[round_or_square], 0.1) == colour[round_or_square]).all()
    assert (shapes.position_of(images) == position).all()
    assert again.shape == (16, 16, 3)
    spec, source, decode = open_dataset("shapes", "train")
    assert spec.caption_length == L and len(source) == 4096
    loader = BatchLoader(source, decode, global_batch=8, seed=0)
    batch_images, batch_labels = next(iter(loader))
    assert batch_images.shape == (8, 16, 16, 3) and batch_labels.shape == (8, L)


def _block_and_params():
    block = SpatialTransformer(num_heads=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 4, 16)).astype(np.float32)
    context = rng.standard_normal((2, 5, 8)).astype(np.float32)
    mask = np.array([[True, True, True, False, False], [True, True, True, True, True]])
    params = random_params(jax.eval_shape(block.init, jax.random.key(0), x, context, mask)
                           ["params"], scale=0.3)
    return jax.jit(block.apply), params, x, context, mask


def test_cross_attention_output_depends_on_the_context():
    apply, params, x, context, mask = _block_and_params()
    out = np.asarray(apply({"params": params}, x, context, mask))
    other = np.asarray(apply({"params": params}, x, context[::-1], mask[::-1]))
    assert np.max(np.abs(out[0] - other[0])) > 1e-2


def test_cross_attention_ignores_masked_positions():
    apply, params, x, context, mask = _block_and_params()
    out = apply({"params": params}, x, context, mask)
    changed = context.copy()
    changed[0, 3:] = 100.0  # padded positions of example 0
    np.testing.assert_allclose(apply({"params": params}, x, changed, mask), out,
                               rtol=1e-5, atol=1e-5)
    shorter = apply({"params": params}, x[:1], context[:1, :3], mask[:1, :3])
    np.testing.assert_allclose(shorter, out[:1], rtol=1e-5, atol=1e-5)


def test_zero_initialised_transformer_block_starts_as_the_identity():
    block = SpatialTransformer(num_heads=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 4, 16)).astype(np.float32)
    context = rng.standard_normal((2, 5, 8)).astype(np.float32)
    params = jax.jit(block.init)(jax.random.key(0), x, context)["params"]
    np.testing.assert_allclose(jax.jit(block.apply)({"params": params}, x, context), x,
                               atol=1e-6)


def test_precomputed_embeddings_are_looked_up_by_caption(tmp_path):
    path = str(tmp_path / "emb.npz")
    emb = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32)
    np.savez(path, captions=np.array(["a red circle on the left", "a blue square at the top"]),
             embeddings=emb)
    encoder = PrecomputedTextEncoder(file=path, width=4, max_length=L)
    tokens = text.tokenize_all(["a blue square at the top", "", "unknown"], L)
    params = random_params(jax.eval_shape(encoder.init, jax.random.key(0), tokens)["params"])
    context, mask = jax.jit(encoder.apply)({"params": params}, tokens)
    assert context.shape == (3, 4, 4) and mask.tolist() == [[True] * 4, [True] + [False] * 3,
                                                            [True] + [False] * 3]
    proj = params["proj"]
    np.testing.assert_allclose(context[0, 1:], emb[1] @ proj["kernel"] + proj["bias"], rtol=1e-5,
                               atol=1e-5)
    np.savez(path, captions=np.array(["x"]), other=emb)
    from diffusion_jax.models.text_encoder import load_embedding_table
    load_embedding_table.cache_clear()
    config = tiny_text_config()
    config.text.update(encoder="precomputed", embeddings=path)
    with pytest.raises(ConfigError, match="embeddings"):
        builders.build_method(config)


@pytest.mark.parametrize("base", [shapes_edm, shapes_edm_ddpmpp, shapes_dit],
                         ids=["unet", "ncsnpp", "dit"])
def test_text_conditional_denoiser_depends_on_the_caption(base):
    method = builders.build_method(tiny_text_config(base))
    assert method.caption_length == L
    params = random_params(jax.eval_shape(method.init_params, jax.random.key(0)), scale=0.2)
    x = np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)
    red = text.tokenize_all(["a red circle on the left"] * 2, L)
    blue = text.tokenize_all(["a blue circle on the left"] * 2, L)
    D = jax.jit(method.conditional_denoiser(params))
    a, b, c = (np.asarray(D(x, 1.0, tokens)) for tokens in (red, blue, red))
    assert np.max(np.abs(a - b)) > 1e-4
    np.testing.assert_allclose(a, c, rtol=1e-6)


def test_dit_starts_at_zero_output_by_adaln_zero():
    from diffusion_jax.models.dit import DiT

    dit = DiT(patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=10)
    x = np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)
    t, labels = np.ones((2,), np.float32), np.array([1, 10], np.int32)

    @jax.jit
    def output(rng):
        return dit.apply(dit.init(rng, x, t, labels), x, t, labels)
    out = np.asarray(output(jax.random.key(0)))
    assert out.shape == x.shape and np.max(np.abs(out)) == 0.0


def test_dropped_captions_become_the_empty_caption():
    tokens = jnp.asarray(text.tokenize_all(["a red circle on the left"] * 64, L))
    dropped = guidance.drop_labels(jax.random.key(0), tokens, 0.5,
                                   guidance.null_condition(0, L))
    empty = np.all(np.asarray(dropped) == text.PAD, axis=1)
    kept = np.all(np.asarray(dropped) == np.asarray(tokens), axis=1)
    assert np.all(empty | kept) and 16 < empty.sum() < 48  # whole captions, about half


@pytest.mark.parametrize("backbone", [shapes_edm, shapes_edm_ddpmpp], ids=["unet", "ncsnpp"])
@pytest.mark.parametrize("method_name", ["ddpm", "score_sde", "edm"])
def test_every_family_trains_on_captions(method_name, backbone):
    """Each method builds with a text encoder and its loss traces on caption-token labels
    (shapes only: jax.eval_shape compiles nothing)."""
    from configs import base

    config = tiny_text_config(backbone)
    family = {"ddpm": base.ddpm_config(), "score_sde": base.score_sde_config("vpsde")}
    if method_name != "edm":
        template = family[method_name]
        config.method = method_name
        for section in ("diffusion", "sde"):
            if section in template:
                config[section] = template[section]
        config.sampling = template.sampling
    method = builders.build_method(config)
    assert method.caption_length == L
    params = jax.eval_shape(method.init_params, jax.random.key(0))
    batch = {"image": jnp.zeros((4, 16, 16, 3)), "label": jnp.zeros((4, L), jnp.int32)}
    loss, _ = jax.eval_shape(method.loss, params, batch, jax.random.key(1))
    assert loss.shape == ()
    if backbone is shapes_edm:  # by value, on one backbone: the caption reaches each loss
        _check_the_caption_reaches_the_loss(method, params)


def _check_the_caption_reaches_the_loss(method, abstract):
    """The same images, noise and random weights: two different captions give two losses (the
    caption reaches the network), and the same caption twice gives the bit-identical loss (the
    difference is the caption's, not the randomness'). Small random weights predict little, so
    the difference is small (1e-5 relative for DDPM's epsilon loss) but exact."""
    params = random_params(abstract, scale=0.2)
    images, tokens, _ = shapes.load_shapes("test")
    x = jnp.asarray(images[:4])
    loss = jax.jit(lambda p, c: method.loss(p, {"image": x, "label": c}, jax.random.key(1))[0])
    first, again = float(loss(params, tokens[:4])), float(loss(params, tokens[:4]))
    other = float(loss(params, tokens[4:8]))
    assert first == again  # deterministic: so any difference below is the caption's
    assert first != other, first  # an ignored caption gives bit-identical losses


@pytest.mark.slow
def test_a_text_conditional_ncsnpp_trains_through_the_edm_loss():
    config = tiny_text_config(shapes_edm_ddpmpp)
    config.model.update(ch_mult=(1,), resblock_type="ddpm")  # quick to compile; the middle attends
    method = builders.build_method(config)
    images, tokens, _ = shapes.load_shapes("test")
    batch = {"image": jnp.asarray(images[:8]), "label": jnp.asarray(tokens[:8])}
    optimizer = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, rng):
        (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = random_params(jax.eval_shape(method.init_params, jax.random.key(0)))
    params, opt_state = start, optimizer.init(start)
    for i in range(3):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        assert np.isfinite(loss)
    caption_path = lambda p: (p["backbone"]["context_emb"],  # noqa: E731
                              p["backbone"]["SpatialTransformer_0"]["block0"]["cross_attn"],
                              p["encoder"]["token_embed"])
    for before, after in zip(jax.tree.leaves(caption_path(start)),
                             jax.tree.leaves(caption_path(params))):
        assert np.any(before != after)


def test_text_config_errors_are_config_errors():
    config = tiny_text_config()
    config.data.dataset = "digits"
    with pytest.raises(ConfigError, match="captioned"):
        builders.build_method(config)


RED_LEFT, BLUE_LEFT = "a red square on the left", "a blue square on the left"
# A tiny DiT text-to-image EDM, 400 steps of batch 16: enough to learn colour from the caption,
# not yet position. P_mean -0.4 trains more at the noise levels where colour is decided.
TRAINED = {"model.patch_size": 4, "model.hidden_size": 64, "model.depth": 2,
           "model.num_heads": 2, "text.width": 32, "text.num_layers": 1, "text.num_heads": 2,
           "edm.P_mean": -0.4, "training.num_steps": 400, "training.batch_size": 16,
           "training.checkpoint_every": 400, "training.log_every": 100,
           "training.sample_at_end": False, "optim.lr": 3e-3, "optim.warmup_steps": 0,
           "sampling.num_samples": 32, "sampling.batch_size": 32, "sampling.num_steps": 8,
           "sampling.use_ema": False}


def _launch_one_device(workdir, *args):
    flags = [f"--config.{k}={v}" for k, v in TRAINED.items()]
    return launch_one_device("--config=configs/text/shapes_dit.py", f"--workdir={workdir}",
                             *flags, *args)


@pytest.fixture(scope="module")
def trained_text_model(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("text"))
    result = _launch_one_device(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    config = shapes_dit.get_config()
    for key, value in TRAINED.items():
        section, name = key.split(".")
        config[section][name] = value
    return config, workdir


def _colour_accuracy(config, workdir, guidance_scale):
    from diffusion_jax import builders, parallel, runs, sampling

    mesh = parallel.make_mesh(jax.devices()[:1])
    method, state = runs.restore(config, workdir, mesh)
    captions = [shapes.caption(c, s, "on the left") for c in shapes.COLOURS
                for s in ("square", "circle")]
    conditions = np.repeat(text.tokenize_all(captions, L), 32, axis=0)
    sampler = builders.build_sampler(config, method).replace(guidance_scale=guidance_scale)
    images = sampling.generate(method, state.params, jax.random.key(7), len(conditions), 96,
                               mesh, sampler, conditions=conditions)
    colour, _ = shapes.attributes([text.detokenize(c) for c in conditions])
    return {margin: float(np.mean(shapes.colour_of(images, margin) == colour))
            for margin in (0.0, 0.1)}


@pytest.mark.slow
def test_guided_samples_follow_the_caption_colour_more_often(trained_text_model):
    """A sample follows its caption when the caption's colour channel has the largest mean by
    more than 0.1 (a clearly drawn shape of that colour: every square and circle of the data
    passes)."""
    unguided = _colour_accuracy(*trained_text_model, 1.0)
    guided = _colour_accuracy(*trained_text_model, 3.0)
    print(f"over 192 samples, dominant colour / clear margin: unguided {unguided[0.0]:.3f} / "
          f"{unguided[0.1]:.3f}, guidance 3: {guided[0.0]:.3f} / {guided[0.1]:.3f}")
    assert guided[0.1] >= 0.9 and guided[0.1] >= unguided[0.1] + 0.15, (unguided, guided)
    assert guided[0.0] >= unguided[0.0]


@pytest.mark.slow
def test_prompt_in_sample_mode_draws_that_caption(trained_text_model):
    _, workdir = trained_text_model
    result = _launch_one_device(workdir, "--mode=sample", f"--prompt={RED_LEFT}",
                                f"--negative_prompt={BLUE_LEFT}")
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = glob.glob(f"{workdir}/samples/sample_400_*_prompt.npz")
    out = np.load(path)
    assert out["images"].shape == (32, 16, 16, 3)
    assert set(out["captions"].tolist()) == {RED_LEFT}
    assert np.mean(shapes.colour_of(out["images"]) == 0) >= 0.9


def test_prompt_with_a_model_without_text_is_a_one_line_error(tmp_path):
    result = launch_one_device(f"--workdir={tmp_path}", "--mode=sample", "--prompt=a seven")
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "text-conditional" in lines[0]


def test_prompt_needs_a_text_model_and_sample_mode(tmp_path):
    from configs.edm import digits

    with pytest.raises(ConfigError, match="text-conditional"):
        launcher.run(digits.get_config(), str(tmp_path), "sample", prompt="a seven")
    with pytest.raises(ConfigError, match="mode=sample"):
        launcher.run(tiny_text_config(), str(tmp_path), "train", prompt="a red circle")
