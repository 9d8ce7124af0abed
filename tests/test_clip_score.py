"""CLIP's two towers, its preprocessing and the CLIP score (`models.clip_vision`,
`evaluation.clip_score`) against transformers on a tiny random `CLIPModel`
(tests/data/clip_tiny, written by tools/make_clip_fixtures.py with transformers 5.24)."""
import functools
import json
import os
import shutil

import numpy as np
import pytest

from diffusion_jax.errors import ConfigError
from diffusion_jax.evaluation import clip_score

DATA = os.path.join(os.path.dirname(__file__), "data", "clip_tiny")
MODEL = os.path.join(DATA, "model")


@functools.lru_cache(maxsize=None)
def reference():
    return dict(np.load(os.path.join(DATA, "reference.npz")))


@functools.lru_cache(maxsize=None)
def model():
    return clip_score.load_clip_model(MODEL)


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_image_tower_equals_transformers():
    """Our ViT (patches, class token, pre-LN, gelu blocks, post-LN class token, projection) on
    the processor's pixels gives transformers' pooled output and `get_image_features`."""
    ref, m = reference(), model()
    out = m.vision.apply({"params": m.params["vision"]}, ref["pixel_values"])
    assert max_err(out.pooled, ref["vision_pooled"]) < 1e-5
    assert max_err(out.image_embeds, ref["image_embeds"]) < 1e-5
    # negative control: the embeddings are not all alike, so a mis-mapped tensor would show
    assert max_err(ref["image_embeds"][0], ref["image_embeds"][1]) > 0.1


def test_text_tower_equals_transformers():
    """Our tokenizer gives transformers' ids (padding to the longest) and our text tower with
    its projection gives `get_text_features` (the end-of-text token is id 2513 here, found by
    id, not as the largest id)."""
    ref, m = reference(), model()
    ids = m.tokenizer([str(c) for c in ref["captions"]])
    length = ref["input_ids"].shape[1]
    np.testing.assert_array_equal(ids[:, :length], ref["input_ids"])
    embeds = m.text.apply({"params": m.params["text"]}, ids)
    assert max_err(embeds, ref["text_embeds"]) < 1e-5
    pooled = m.text.encoder.apply({"params": m.params["text"]["encoder"]}, ids).pooled
    assert max_err(pooled, ref["text_pooled"]) < 1e-5
    assert max_err(ref["text_embeds"][0], ref["text_embeds"][1]) > 0.1  # negative control


def test_preprocessing_equals_the_pil_processor_and_the_default_within_one_level():
    """Resize of the shorter side (bicubic), centre crop, CLIP mean/std: equal to
    `CLIPImageProcessorPil` to float32 rounding, and within 0.015 (one 8-bit level after
    normalisation) of transformers 5's torchvision-resizing `CLIPImageProcessor`."""
    ref, m = reference(), model()
    ours = np.concatenate([clip_score.preprocess(ref["image_40x48"], m.preprocessing),
                           clip_score.preprocess(ref["image_36x36"], m.preprocessing)])
    assert ours.shape == ref["pixel_values"].shape == (4, 32, 32, 3)
    assert max_err(ours, ref["pixel_values_pil"]) < 1e-5
    assert max_err(ours, ref["pixel_values"]) < 0.016
    # negative control: without the centre crop (the top-left corner) the pixels differ
    shifted = clip_score.preprocess(ref["image_40x48"][:, :, 8:], m.preprocessing)
    assert max_err(shifted, ref["pixel_values_pil"][:2]) > 0.1


def test_clip_score_equals_the_formula_on_transformers_embeddings():
    """100 mean_i max(cos_i, 0) from uint8 images and captions equals the value the fixture
    script computed from transformers' embeddings; shuffled captions (rolled by one) give the
    fixture's other, recorded score (the negative control). torchmetrics clamps the mean
    instead; on this random model the mean cosine is negative, so its score is 0."""
    ref, m = reference(), model()
    images = np.concatenate([clip_score.preprocess(ref["image_40x48"], m.preprocessing),
                             clip_score.preprocess(ref["image_36x36"], m.preprocessing)])
    captions = [str(c) for c in ref["captions"]]
    image_embeds = m.vision.apply({"params": m.params["vision"]}, images).image_embeds
    text_embeds = clip_score.text_embeddings(m, captions, batch_size=4)
    np.testing.assert_allclose(clip_score.cosines(ref["image_embeds"], ref["text_embeds"]),
                               ref["cosines"], atol=1e-6)
    assert clip_score.clip_score(ref["image_embeds"], ref["text_embeds"]) == pytest.approx(
        float(ref["clip_score"]), abs=1e-4)
    assert clip_score.clip_score(image_embeds, text_embeds) == pytest.approx(
        float(ref["clip_score"]), abs=0.05)
    shuffled = clip_score.clip_score(image_embeds, np.roll(text_embeds, 1, axis=0))
    assert shuffled == pytest.approx(float(ref["clip_score_shuffled"]), abs=0.05)
    assert abs(shuffled - float(ref["clip_score"])) > 0.3
    assert float(ref["torchmetrics_score"]) == 0.0 and np.mean(ref["cosines"]) < 0
    # the whole path from uint8 images of one size
    whole = clip_score.clip_score_of(m, ref["image_40x48"], captions[:2], batch_size=2)
    assert whole == pytest.approx(100 * np.mean(np.maximum(ref["cosines"][:2], 0)), abs=0.05)


def test_a_missing_file_is_a_config_error(tmp_path):
    partial = tmp_path / "clip"
    shutil.copytree(MODEL, partial)
    os.remove(partial / "merges.txt")
    with pytest.raises(ConfigError, match="merges.txt"):
        clip_score.load_clip_model(str(partial))
    with pytest.raises(ConfigError, match="eval.clip_model_dir"):
        clip_score.load_clip_model(str(tmp_path / "absent"))


SD_TINY = os.path.join(os.path.dirname(__file__), "data", "sd_tiny", "sd15")


def folder_caption(i):
    """The captions of `caption_folder`; this random CLIP gives positive cosines to the empty
    caption's samples, negative ones to the others, so the score is neither 0 nor unclamped."""
    return "" if i == 0 else f"a photo of shape number {i}"


def caption_folder(root, count=4):
    """`root/test/` with `count` smooth random images (40x48 pixels) and `folder_caption`s."""
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(root / "test")
    for i in range(count):
        coarse = rng.uniform(0, 255, (11, 13, 3))
        image = np.kron(coarse, np.ones((4, 4, 1)))[:40, :48].astype(np.uint8)
        Image.fromarray(image).save(root / "test" / f"{i}.png")
        (root / "test" / f"{i}.txt").write_text(folder_caption(i))
    return str(root)


def sd_eval_config(data_dir, **eval_options):
    from diffusion_jax.config_files import load_config

    config = load_config("configs/stable_diffusion/sd15.py")
    config.sd.model_dir = SD_TINY
    config.data.data_dir = data_dir
    config.sampling.num_steps = 4
    config.eval.update(dict(dict(num_samples=4, batch_size=2, num_reference=4,
                                 clip_model_dir=MODEL), **eval_options))
    return config


@pytest.mark.slow
def test_eval_mode_of_stable_diffusion_gives_fid_against_the_folder_and_clip_score(
        tmp_path, monkeypatch):
    """`--mode=eval` on the tiny SD 1.5 directory: samples of the folder's test captions in
    order; FID of the feature network against the folder's test images resized to the sampling
    resolution (32x32), and the CLIP score of each sample against its own caption. The feature
    network is replaced by a 2-d colour feature (the FID Inception's own agreement with
    pytorch-fid is tests/test_inception.py's), so the FID is recomputed here exactly."""
    from diffusion_jax import launcher
    from diffusion_jax.data.folder import load_resized
    from diffusion_jax.evaluation import inception
    from diffusion_jax.evaluation.frechet import feature_statistics, frechet_distance
    from diffusion_jax.images import quantize, to_uint8

    def colour(images):
        return np.stack([images[..., 0].mean((1, 2)), images[..., 1].std((1, 2))], -1)

    seen = []

    def features(path, batch_size, mesh, protocol):
        def fn(images):
            seen.append(np.asarray(images))
            return colour(np.asarray(images, np.float64)), np.ones((len(images), 10))
        return fn

    monkeypatch.setattr(inception, "inception_feature_fn", features)
    weights = tmp_path / "inception.npz"
    weights.write_bytes(b"")
    data_dir = caption_folder(tmp_path / "data")
    config = sd_eval_config(data_dir, inception_weights=str(weights))
    workdir = tmp_path / "eval"
    assert launcher.run(config, str(workdir), "eval") == 0
    with open(workdir / "eval" / "step_0" / "metrics.json") as f:
        metrics = json.load(f)
    samples = np.concatenate([np.load(workdir / "eval" / "step_0" / f"batch_0000{b}.npz")
                              ["images"] for b in range(2)])
    assert samples.shape == (4, 32, 32, 3)
    reference = np.stack([load_resized(os.path.join(data_dir, "test", f"{i}.png"), (32, 32, 3))
                          for i in range(4)])
    np.testing.assert_allclose(seen[1], reference, atol=1e-6)  # the folder's images, at 32x32
    expected = frechet_distance(*feature_statistics(colour(quantize(samples).astype(np.float64))),
                                *feature_statistics(colour(reference.astype(np.float64))))
    assert metrics["fid"] == pytest.approx(expected, rel=1e-6)
    captions = [folder_caption(i) for i in range(4)]
    clip = clip_score.load_clip_model(MODEL)
    cosines = clip_score.cosines(clip_score.image_embeddings(clip, to_uint8(samples)),
                                 clip_score.text_embeddings(clip, captions))
    assert np.any(cosines > 0) and np.any(cosines < 0)  # the clamp matters here
    assert metrics["clip_score"] == pytest.approx(100 * np.mean(np.maximum(cosines, 0)),
                                                  abs=1e-5)
    # negative control: the same samples scored against the captions rolled by one differ
    rolled = clip_score.clip_score_of(clip, to_uint8(samples), captions[1:] + captions[:1])
    assert abs(rolled - metrics["clip_score"]) > 0.1
    print("eval metrics", metrics, "rolled captions", rolled)


@pytest.mark.slow
def test_eval_mode_names_a_missing_file_before_sampling(tmp_path):
    from diffusion_jax import launcher

    data_dir = caption_folder(tmp_path / "data", count=1)
    weights = tmp_path / "inception.npz"
    weights.write_bytes(b"")
    config = sd_eval_config(data_dir, inception_weights=str(tmp_path / "absent.npz"))
    with pytest.raises(ConfigError, match="eval.inception_weights"):
        launcher.run(config, str(tmp_path / "a"), "eval")
    config = sd_eval_config(data_dir, inception_weights=str(weights),
                            clip_model_dir=str(tmp_path / "no_clip"))
    with pytest.raises(ConfigError, match="eval.clip_model_dir .* has no config.json"):
        launcher.run(config, str(tmp_path / "b"), "eval")
    assert not os.path.exists(tmp_path / "b" / "eval" / "step_0" / "batch_00000.npz")


def test_parameter_counts_of_clip_vit_l14():
    """openai/clip-vit-large-patch14's towers at their real shapes have transformers' parameter
    counts (`CLIPModel` on torch's meta device: image tower with projection 303,966,208, text
    tower with projection 123,650,304; with logit_scale 427,616,513 in all)."""
    import jax

    from diffusion_jax.models.clip_text import CLIPTextEncoder
    from diffusion_jax.models.clip_vision import CLIPTextWithProjection, CLIPVisionEncoder
    from diffusion_jax.weight_files import abstract_params

    def count(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))

    vision = CLIPVisionEncoder(patch_size=14, width=1024, num_layers=24, num_heads=16,
                               mlp_dim=4096, projection_dim=768)
    text = CLIPTextWithProjection(CLIPTextEncoder(), projection_dim=768)
    assert count(abstract_params(vision, np.zeros((1, 224, 224, 3), np.float32))) == 303_966_208
    assert count(abstract_params(text, np.zeros((1, 77), np.int32))) == 123_650_304
