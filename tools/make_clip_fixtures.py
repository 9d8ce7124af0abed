"""Reference fixtures of CLIP's two towers and the CLIP score, made with transformers (torch on
CPU) for tests/test_clip_score.py. Run from the repository root with the reference venv:

    /work/refvenv/bin/python tools/make_clip_fixtures.py

Nothing is downloaded. Writes under `--out` (tests/data/clip_tiny):

model/           a transformers `CLIPModel` directory (`save_pretrained`: config.json,
                 model.safetensors) of a tiny random CLIP (text: 2 layers, width 32,
                 quick_gelu, the tiny SD tokenizer's 2,514 tokens; vision: 32x32 pixels, 8x8
                 patches, 2 layers, width 32, gelu; projection 16), with the slow
                 `CLIPImageProcessor`'s preprocessor_config.json (shortest side and crop 32)
                 and the tokenizer files of tests/data/sd_tiny/sd15/tokenizer
reference.npz    images (uint8, two sizes, one of them not square), captions, the pixel_values
                 (NHWC) of `CLIPImageProcessor` (transformers 5's default, resizing with
                 torchvision) and of `CLIPImageProcessorPil` (PIL's bicubic, as CLIP's own
                 preprocessing and transformers 4's processor), the tokenizer's input_ids and attention_mask (padding to
                 the longest), the pooled outputs and projected embeddings of both towers
                 (`get_image_features`, `get_text_features`), per-pair cosines, and the CLIP
                 scores: `clip_score` = 100 mean_i max(cos_i, 0) (Hessel et al. 2021), its
                 value for the captions rolled by one (`clip_score_shuffled`, the negative
                 control), and torchmetrics' `CLIPScore` formula max(100 mean_i cos_i, 0)
                 (`torchmetrics_score`), which equals Hessel's when no cosine is negative

Random weights as tools/make_sd_fixtures.py draws them: every >= 2-d tensor N(0, 1 / fan_in),
every vector plus N(0, 0.1^2) (no LayerNorm is the identity), rounded to fp16 values.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sd_fixtures import randomize  # noqa: E402

TOKENIZER = os.path.join("tests", "data", "sd_tiny", "sd15", "tokenizer")
CAPTIONS = ["a red circle on the left", "A Photo of a CAT, sitting on a mat!!!",
            "an astronaut riding a horse", ""]


def tiny_clip(seed):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)  # the class embedding's initial draw, which randomize perturbs
    config = CLIPConfig(
        text_config=dict(vocab_size=2514, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         hidden_act="quick_gelu", bos_token_id=2512, eos_token_id=2513,
                         pad_token_id=2513),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"),
        projection_dim=16)
    return randomize(CLIPModel(config), seed)


def test_images(seed):
    """Two smooth random uint8 images of 40x48 and two of 36x36 pixels."""
    rng = np.random.default_rng(seed)

    def smooth(h, w):
        coarse = rng.uniform(0, 255, (h // 4 + 1, w // 4 + 1, 3))
        image = np.kron(coarse, np.ones((4, 4, 1)))[:h, :w]
        return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)

    return [smooth(40, 48), smooth(40, 48), smooth(36, 36), smooth(36, 36)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join("tests", "data", "clip_tiny"))
    args = parser.parse_args()
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil, CLIPTokenizer

    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    model = tiny_clip(seed=7)
    model.save_pretrained(model_dir)
    processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                   crop_size={"height": 32, "width": 32})
    processor.save_pretrained(model_dir)
    for name in os.listdir(TOKENIZER):
        shutil.copy(os.path.join(TOKENIZER, name), model_dir)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir)

    images = test_images(seed=3)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    pil_processor = CLIPImageProcessorPil(size={"shortest_edge": 32},
                                          crop_size={"height": 32, "width": 32})
    pixels_pil = pil_processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels)
        text = model.text_model(input_ids=tokens["input_ids"],
                                attention_mask=tokens["attention_mask"])
        image_embeds = model.get_image_features(pixel_values=pixels)
        text_embeds = model.get_text_features(input_ids=tokens["input_ids"],
                                              attention_mask=tokens["attention_mask"])
    for name, tensor in (("image", image_embeds), ("text", text_embeds)):
        if not isinstance(tensor, torch.Tensor):  # transformers 5 returns an output object
            tensor = tensor.pooler_output
        if name == "image":
            image_embeds = tensor
        else:
            text_embeds = tensor
    unit = lambda e: e / e.norm(dim=-1, keepdim=True)  # noqa: E731
    img, txt = unit(image_embeds), unit(text_embeds)
    cos = (img * txt).sum(-1)
    cos_shuffled = (img * txt.roll(1, dims=0)).sum(-1)
    hessel = lambda c: float(100 * c.clamp(min=0).mean())  # noqa: E731
    np.savez(
        os.path.join(args.out, "reference.npz"),
        image_40x48=np.stack(images[:2]), image_36x36=np.stack(images[2:]),
        captions=np.array(CAPTIONS), pixel_values=pixels.permute(0, 2, 3, 1).numpy(),
        pixel_values_pil=pixels_pil.permute(0, 2, 3, 1).numpy(),
        input_ids=tokens["input_ids"].numpy().astype(np.int32),
        attention_mask=tokens["attention_mask"].numpy().astype(np.int32),
        vision_pooled=vision.pooler_output.numpy(), text_pooled=text.pooler_output.numpy(),
        image_embeds=image_embeds.numpy(), text_embeds=text_embeds.numpy(),
        cosines=cos.numpy(), cosines_shuffled=cos_shuffled.numpy(),
        clip_score=np.float64(hessel(cos)), clip_score_shuffled=np.float64(hessel(cos_shuffled)),
        torchmetrics_score=np.float64(max(float(100 * cos.mean()), 0.0)))
    print("processor:", type(processor).__name__, "cosines", cos.numpy(),
          "shuffled", cos_shuffled.numpy(), "score", hessel(cos), hessel(cos_shuffled),
          "torchmetrics", max(float(100 * cos.mean()), 0.0),
          "torchvision vs PIL resize", float((pixels - pixels_pil).abs().max()))


if __name__ == "__main__":
    main()
