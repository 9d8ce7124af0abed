"""Reference fixtures of the Stable Diffusion networks, tokenizer and pipelines, made with the
original implementations (torch on CPU) for tests/test_sd_models.py and
tests/test_clip_tokenizer.py. Run from the repository root with the reference venv:

    git -C "$(fetch github:Stability-AI/stablediffusion)" archive HEAD ldm | tar -x -C /tmp/ldm_src
    /work/refvenv/bin/python tools/make_sd_fixtures.py --ldm_repo /tmp/ldm_src

(`--ldm_repo`: a directory holding Stability's `ldm` package, the original CompVis / Stability
modules, for the single-file checkpoints.) Needs diffusers, transformers, open_clip and
safetensors; nothing is downloaded. Writes under `--out` (tests/data):

clip_tokenizer/
  vocab.json.gz, merges.txt.gz   CLIP's full BPE vocabulary (49,408 tokens), rebuilt from
                                 open_clip's bpe_simple_vocab_16e6.txt.gz as CLIP builds it
  reference.npz                  prompts, and transformers `CLIPTokenizer` ids (padding to 77,
                                 truncation) with SD 1.5's tokenizer config (`ids_sd15`), SD 2's
                                 (`ids_sd21`) and the tiny tokenizers below (`ids_tiny_sd15`, ...)
sd_tiny/sd15/, sd_tiny/sd21/     diffusers model directories (`save_pretrained`) of tiny random
                                 SD 1.5- and SD 2.1-shaped networks; the tokenizer is CLIP's
                                 first 2,000 merges in the released file layout. The U-Nets are
                                 stored in fp16, sd15's text encoder and VAE in fp32, sd21's in
                                 fp16 (every weight is fp16-representable, so references are
                                 exact either way)
sd_tiny/<name>_reference.npz     inputs and outputs of each network (NHWC)
sd_tiny/<name>_single_file.safetensors, <name>_single_file_reference.npz
                                 CompVis / Stability single-file checkpoints (fp16) written from
                                 the original LDM modules (`openaimodel.UNetModel`, `model.Encoder`
                                 / `Decoder`, the CLIP / OpenCLIP text towers), with their outputs;
                                 sd21's U-Net has the inpainting models' 9 input channels
sd_tiny/pipeline_reference.npz   diffusers StableDiffusionPipeline and Img2ImgPipeline runs on
                                 sd15 with DPMSolverMultistepScheduler (see `pipeline_fixtures`)
sd_tiny/real_shapes.json.gz      the state-dict keys and shapes of the full-size released networks
                                 in both layouts (models built on torch's meta device)

Random weights: every weight matrix / kernel / embedding is redrawn N(0, 1 / fan_in) and every
vector (norm scales, biases) gets N(0, 0.1^2) added, so no tensor is zero or one everywhere; then
rounded to fp16 values. The LDM modules hard-code 32 GroupNorm groups; they are patched to the
tiny configs' 4 (`norm_num_groups` 4 on the diffusers side).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Photo of a CAT, sitting on a mat!!!",
    "",
    "   leading and   trailing\twhitespace\n\n",
    "it's a dog's life; they're here, we've gone, I'm done, you'll see, he'd go",
    "IT'S LOUD, THEY'RE HERE",
    "numbers 1234 and 3.14159, 10k, 2nd",
    "café naïve résumé Ångström",
    "cafe\u0301 decomposed",
    "東京タワーの夜景, 一只猫",
    "नमस्ते दुनिया",
    "ΟΔΟΣ Σίσυφος ΣΑΣ",
    "a 🐱 with 👍🏽 and ❤️ 👨‍👩‍👧",
    "hello<|endoftext|>world",
    "<|startoftext|>start",
    "<|ENDOFTEXT|> upper special",
    "email@example.com #hashtag $100 50% ~tilde~ `code` [brackets] {braces} (parens) \"quotes\"",
    "a\u00a0b\u3000c\u2003d\u200be",
    "sep\x1cfs\x1dgs\x85nel",
    "İstanbul ﬁne ﬁ",
    "''s quote-s 'tis ''re o'neill",
    "a very long prompt " * 30,
    " ".join(["cat"] * 75),
    " ".join(["cat"] * 76),
    "masterpiece, best quality, ultra-detailed, 8k uhd, (photorealistic:1.4), <lora:foo:0.8>",
    "Ünïcödé ÀÉÎÕÜ ǅ ǈ ß ẞ",
]

TINY_MERGES = 2000
CONTEXT = 32  # the tiny text encoders' width = the U-Nets' cross_attention_dim
UNET15 = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
              layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CONTEXT,
              attention_head_dim=2, norm_num_groups=4)
UNET21 = dict(UNET15, attention_head_dim=(2, 4), use_linear_projection=True,
              upcast_attention=True)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
           layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.18215,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
CLIP_TINY = dict(hidden_size=CONTEXT, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 num_train_timesteps=1000, set_alpha_to_one=False, steps_offset=1)


# ---- tokenizer files

def clip_vocabulary(num_merges=None):
    """(vocab list, merges) as CLIP builds them: the 256 byte characters (printable ones first),
    the same with </w>, one token per merge, then the start and end tokens."""
    import open_clip

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]][:num_merges]
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = (chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
             + ["<|startoftext|>", "<|endoftext|>"])
    return vocab, merges


def added_token(content):
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def write_tokenizer(directory, vocab, merges, pad_token):
    """vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json in the layout
    of the released SD tokenizers (bos / eos / unk as normalized AddedTokens, pad a string)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": added_token("<|startoftext|>"),
               "eos_token": added_token("<|endoftext|>"), "pad_token": pad_token,
               "unk_token": added_token("<|endoftext|>")}
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    config = dict(special, add_prefix_space=False, do_lower_case=True, errors="replace",
                  model_max_length=77, tokenizer_class="CLIPTokenizer")
    for key in ("bos_token", "eos_token", "unk_token"):
        config[key] = dict(config[key], __type="AddedToken")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def reference_ids(directory):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(directory)
    return tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="np").input_ids.astype(np.int32)


def tokenizer_fixtures(out, tmp):
    vocab, merges = clip_vocabulary()
    assert len(vocab) == 49408
    directory = os.path.join(out, "clip_tokenizer")
    os.makedirs(directory, exist_ok=True)
    ids = {}
    for name, pad in (("sd15", "<|endoftext|>"), ("sd21", "!")):
        write_tokenizer(os.path.join(tmp, f"full_{name}"), vocab, merges, pad)
        ids[f"ids_{name}"] = reference_ids(os.path.join(tmp, f"full_{name}"))
        tiny = os.path.join(out, "sd_tiny", name, "tokenizer")
        ids[f"ids_tiny_{name}"] = reference_ids(tiny)
    for name in ("vocab.json", "merges.txt"):
        with open(os.path.join(tmp, "full_sd15", name), "rb") as src, \
                gzip.GzipFile(os.path.join(directory, name + ".gz"), "wb", 9, mtime=0) as dst:
            dst.write(src.read())
    np.savez_compressed(os.path.join(directory, "reference.npz"), prompts=np.array(PROMPTS),
                        **ids)


# ---- random weights

def randomize(module, seed):
    """Every >= 2-d parameter redrawn N(0, 1 / fan_in), every vector plus N(0, 0.1^2), all
    rounded to fp16 values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            p.copy_(p.half().float())
    return module.eval()


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def f32(t):
    return t.detach().float().numpy()


# ---- diffusers model directories

def tiny_models(name, seed, vocab_size, eos_token_id):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = randomize(UNet2DConditionModel(**(UNET15 if name == "sd15" else UNET21)), seed)
    vae = randomize(AutoencoderKL(**VAE), seed + 1)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_act="quick_gelu" if name == "sd15" else "gelu",
        bos_token_id=vocab_size - 2, eos_token_id=eos_token_id, pad_token_id=1, **CLIP_TINY))
    return unet, randomize(text, seed + 2), vae


def save_model_dir(directory, name, unet, text, vae, vocab, merges):
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pad = "<|endoftext|>" if name == "sd15" else "!"
    write_tokenizer(os.path.join(directory, "tokenizer"), vocab, merges, pad)
    if name == "sd15":
        scheduler = PNDMScheduler(skip_prk_steps=True, **SCHEDULER)
    else:
        scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction", **SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text,
                                   tokenizer=CLIPTokenizer.from_pretrained(
                                       os.path.join(directory, "tokenizer")),
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    fp16 = {"unet"} if name == "sd15" else {"unet", "text_encoder", "vae"}
    tokenizer_files = os.path.join(tempfile.mkdtemp(), "tokenizer")
    shutil.copytree(os.path.join(directory, "tokenizer"), tokenizer_files)
    for part in fp16:
        getattr(pipe, part).to(torch.float16)
    pipe.save_pretrained(directory, safe_serialization=True)
    for part in fp16:
        getattr(pipe, part).to(torch.float32)
    shutil.rmtree(os.path.join(directory, "tokenizer"))
    shutil.move(tokenizer_files, os.path.join(directory, "tokenizer"))
    return pipe


def network_references(unet, text, vae, tokenizer_dir, seed):
    """Inputs and outputs of each network: U-Net with and without a context mask, the text
    encoder (every hidden state, pooled, clip_skip 1, with a padding mask), the VAE."""
    from transformers import CLIPTokenizer

    g = torch.Generator().manual_seed(seed)
    ref = {}
    with torch.no_grad():
        in_ch = unet.config.in_channels
        x = torch.randn(2, in_ch, 16, 16, generator=g)
        t = torch.tensor([999.0, 12.5])
        context = torch.randn(2, 77, CONTEXT, generator=g)
        mask = torch.ones(2, 77, dtype=torch.bool)
        mask[1, 5:] = False
        ref.update(unet_x=nhwc(x), unet_t=f32(t), unet_context=f32(context),
                   unet_mask=mask.numpy(), unet_out=nhwc(unet(x, t, context).sample),
                   unet_out_masked=nhwc(unet(x, t, context, encoder_attention_mask=mask).sample))

        tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
        ids = tok(["a photo of a cat", "an astronaut riding a horse on the moon!"],
                  padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        out = text(ids.input_ids, output_hidden_states=True)
        masked = text(ids.input_ids, attention_mask=ids.attention_mask)
        ref.update(text_ids=ids.input_ids.numpy().astype(np.int32),
                   text_attention_mask=ids.attention_mask.numpy().astype(bool),
                   text_last=f32(out.last_hidden_state), text_pooled=f32(out.pooler_output),
                   text_hidden=np.stack([f32(h) for h in out.hidden_states]),
                   text_clip_skip1=f32(text.final_layer_norm(out.hidden_states[-2])),
                   text_last_masked=f32(masked.last_hidden_state))

        image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        posterior = vae.encode(image).latent_dist
        z = torch.randn(2, 4, 16, 16, generator=g)
        ref.update(vae_image=nhwc(image), vae_mean=nhwc(posterior.mean),
                   vae_logvar=nhwc(posterior.logvar),
                   vae_decoded_mean=nhwc(vae.decode(posterior.mean).sample), vae_z=nhwc(z),
                   vae_decoded_z=nhwc(vae.decode(z).sample))
    return ref


# ---- the pipelines

def pipeline_fixtures(pipe, out):
    """StableDiffusionPipeline (text-to-image) and StableDiffusionImg2ImgPipeline (strength
    0.75) on the tiny sd15 model, DPMSolverMultistepScheduler.from_config(the model's
    scheduler config) (DPM-Solver++ 2M, lower_order_final), 20 steps, guidance 7.5, batch 2,
    given prompt embeddings (our prompts through the tiny text encoder) and given latents:
    the outputs are the final latents (output_type="latent"), and their VAE decoding.

    Text-to-image: `latents` (N(0, 1), torch generator seed 0) are the initial x_T (the
    scheduler's init_noise_sigma is 1). Img2img: `img2img_image` in [0, 1] -> 2x - 1 -> VAE
    posterior sample (mean + std * `img2img_posterior_noise`) * scaling_factor =
    `img2img_init_latents`; the 20-step schedule is cut to its last int(20 * 0.75) = 15
    timesteps (`img2img_timesteps`), and x = add_noise(init, `img2img_noise`,
    `img2img_latent_timestep`) (sqrt(alpha_bar_t) init + sqrt(1 - alpha_bar_t) noise) starts
    the loop. Both noises come from a torch generator seeded 1 and are recorded as drawn."""
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    prompts = ["a red cube on a blue table", "an astronaut riding a horse"]
    negative = ["", "blurry, low quality"]
    ids = pipe.tokenizer(prompts + negative, padding="max_length", max_length=77,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = pipe.text_encoder(ids).last_hidden_state
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    common = dict(prompt_embeds=embeds[:2], negative_prompt_embeds=embeds[2:],
                  num_inference_steps=20, guidance_scale=7.5, output_type="latent")
    with torch.no_grad():
        final = pipe(latents=latents.clone(), height=32, width=32, **common).images
        decoded = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
    ref = dict(prompt_ids=ids[:2].numpy().astype(np.int32),
               negative_ids=ids[2:].numpy().astype(np.int32),
               prompt_embeds=f32(embeds[:2]), negative_prompt_embeds=f32(embeds[2:]),
               latents=nhwc(latents), timesteps=pipe.scheduler.timesteps.numpy(),
               sigmas=f32(pipe.scheduler.sigmas), final_latents=nhwc(final),
               decoded=nhwc(decoded),
               scheduler_config=np.array(json.dumps(
                   {k: sorted(v) if k == "_use_default_values" else v
                    for k, v in pipe.scheduler.config.items()}, sort_keys=True)))

    draws, noised = [], {}

    def recording(fn):
        def wrapper(*args, **kwargs):
            draws.append(fn(*args, **kwargs))
            return draws[-1]
        return wrapper

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    add_noise = img2img.scheduler.add_noise

    def recording_add_noise(original, noise, timesteps):
        noised.update(init=original.clone(), noise=noise.clone(), t=timesteps.clone())
        return add_noise(original, noise, timesteps)

    img2img.scheduler.add_noise = recording_add_noise
    vae_module.randn_tensor = recording(vae_module.randn_tensor)
    img2img_module.randn_tensor = recording(img2img_module.randn_tensor)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        final = img2img(image=image, strength=0.75, generator=torch.Generator().manual_seed(1),
                        **common).images
    posterior_noise, noise = draws
    assert torch.equal(noise, noised["noise"])
    ref.update(img2img_image=nhwc(image), img2img_posterior_noise=nhwc(posterior_noise),
               img2img_init_latents=nhwc(noised["init"]), img2img_noise=nhwc(noise),
               img2img_latent_timestep=noised["t"].numpy(),
               img2img_timesteps=img2img.scheduler.timesteps[
                   img2img.scheduler.begin_index:].numpy(),
               img2img_final_latents=nhwc(final))
    np.savez_compressed(os.path.join(out, "pipeline_reference.npz"), **ref)


# ---- single-file checkpoints from the original LDM modules

def ldm_modules(ldm_repo, groups):
    """Stability's UNetModel, Encoder, Decoder, with `groups` GroupNorm groups (32 in the file).
    `omegaconf` (which openaimodel imports for one isinstance check) is stubbed if absent."""
    if ldm_repo not in sys.path:
        sys.path.insert(0, ldm_repo)
    try:
        import omegaconf.listconfig  # noqa: F401
    except ImportError:
        stub = types.ModuleType("omegaconf.listconfig")
        stub.ListConfig = type("ListConfig", (list,), {})
        sys.modules["omegaconf"] = types.ModuleType("omegaconf")
        sys.modules["omegaconf.listconfig"] = stub
    import ldm.modules.attention as attention
    import ldm.modules.diffusionmodules.model as model
    import ldm.modules.diffusionmodules.openaimodel as openaimodel
    from ldm.modules.diffusionmodules.util import GroupNorm32

    openaimodel.normalization = lambda channels: GroupNorm32(groups, channels)
    attention.Normalize = lambda c: torch.nn.GroupNorm(groups, c, eps=1e-6, affine=True)
    model.Normalize = lambda c, num_groups=32: torch.nn.GroupNorm(groups, c, eps=1e-6, affine=True)
    return openaimodel.UNetModel, model.Encoder, model.Decoder


class LDMAutoencoder(torch.nn.Module):
    """The parameter layout and the encode / decode of `ldm.models.autoencoder.AutoencoderKL`
    (whose module imports pytorch_lightning): encoder, quant_conv, post_quant_conv, decoder."""

    def __init__(self, encoder_cls, decoder_cls, ch, ch_mult, num_res_blocks):
        super().__init__()
        dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=ch,
                  ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=[],
                  dropout=0.0)
        self.encoder, self.decoder = encoder_cls(**dd), decoder_cls(**dd)
        self.quant_conv = torch.nn.Conv2d(8, 8, 1)
        self.post_quant_conv = torch.nn.Conv2d(4, 4, 1)


def ldm_unet(unet_cls, name):
    kw = dict(image_size=16, in_channels=4 if name == "sd15" else 9, out_channels=4,
              model_channels=16, num_res_blocks=2, attention_resolutions=[1],
              channel_mult=(1, 2), use_spatial_transformer=True, transformer_depth=1,
              context_dim=CONTEXT, legacy=False, use_checkpoint=False)
    if name == "sd15":
        kw.update(num_heads=2)
    else:
        kw.update(num_head_channels=8, use_linear_in_transformer=True)
    return unet_cls(**kw)


def open_clip_text(vocab_size, seed):
    """An OpenCLIP text tower (the SD 2 cond_stage_model.model, its visual tower deleted) with one
    layer more than the tiny sd21 text encoder: SD 2 uses the penultimate."""
    import open_clip

    model = open_clip.model.CLIP(
        embed_dim=16, vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16,
                                                               patch_size=8,
                                                               image_size=16),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=vocab_size, width=32,
                                             heads=4, layers=CLIP_TINY["num_hidden_layers"] + 1,
                                             mlp_ratio=CLIP_TINY["intermediate_size"] / CONTEXT))
    del model.visual
    return randomize(model, seed)


def open_clip_penultimate(model, ids):
    """`FrozenOpenCLIPEmbedder.encode_with_transformer` with layer="penultimate": every
    resblock but the last, then ln_final."""
    x = model.token_embedding(ids) + model.positional_embedding
    batch_first = getattr(model.transformer, "batch_first", False)
    x = x if batch_first else x.permute(1, 0, 2)
    for block in model.transformer.resblocks[:-1]:
        x = block(x, attn_mask=model.attn_mask)
    x = x if batch_first else x.permute(1, 0, 2)
    return model.ln_final(x)


def single_file_fixtures(out, ldm_repo, name, text_state, pipe, seed):
    """A single-file checkpoint of LDM-layout networks (fp16), its reference outputs, and the
    check that diffusers' own converter turns it into the same networks."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from safetensors.torch import save_file

    unet_cls, encoder_cls, decoder_cls = ldm_modules(ldm_repo, UNET15["norm_num_groups"])
    unet = randomize(ldm_unet(unet_cls, name), seed)
    vae = randomize(LDMAutoencoder(encoder_cls, decoder_cls, VAE["block_out_channels"][0],
                                   (1, 2), VAE["layers_per_block"]), seed + 1)
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    state.update({f"cond_stage_model.{k}": v for k, v in text_state.items()})
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    state.update(betas=betas.float(), alphas_cumprod=torch.cumprod(1 - betas, 0).float(),
                 **{"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates":
                    torch.tensor(0, dtype=torch.int32)})
    state = {k: (v.half() if v.is_floating_point() and k.startswith(("model.", "first_stage",
                                                                       "cond_stage")) else v)
             .contiguous() for k, v in state.items()}
    save_file(state, os.path.join(out, f"{name}_single_file.safetensors"))

    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        x = torch.randn(2, unet.in_channels, 16, 16, generator=g)
        t = torch.tensor([500.0, 3.0])
        context = torch.randn(2, 77, CONTEXT, generator=g)
        eps = unet(x, t, context)
        image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        moments = vae.quant_conv(vae.encoder(image))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        z = torch.randn(2, 4, 16, 16, generator=g)
        decoded = vae.decoder(vae.post_quant_conv(z))
        ref = dict(unet_x=nhwc(x), unet_t=f32(t), unet_context=f32(context), unet_out=nhwc(eps),
                   vae_image=nhwc(image), vae_mean=nhwc(mean),
                   vae_logvar=nhwc(torch.clamp(logvar, -30.0, 20.0)), vae_z=nhwc(z),
                   vae_decoded_z=nhwc(decoded))

        checkpoint = {k: v.float() for k, v in state.items()}
        unet_config = dict(UNET15 if name == "sd15" else UNET21, in_channels=unet.in_channels)
        converted = UNet2DConditionModel(**unet_config).eval()
        converted.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, converted.config))
        converted_vae = AutoencoderKL(**VAE).eval()
        converted_vae.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, converted_vae.config))
        print(f"{name} single file: diffusers' converter vs the LDM modules, max |diff| "
              f"U-Net {(converted(x, t, context).sample - eps).abs().max():.2e}, VAE decoder "
              f"{(converted_vae.decode(z).sample - decoded).abs().max():.2e}")
    return ref


# ---- full-size shapes

def real_shapes(ldm_repo):
    """{network: {key: shape}} of the full-size released networks, built on the meta device."""
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, os.getcwd())
    from diffusion_jax.importers.stable_diffusion_configs import RELEASED

    def shapes(module, prefix=""):
        return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}

    unet_cls, encoder_cls, decoder_cls = ldm_modules(ldm_repo, 32)
    out = {}
    ldm_common = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                      num_res_blocks=2, attention_resolutions=[4, 2, 1], channel_mult=(1, 2, 4, 4),
                      use_spatial_transformer=True, transformer_depth=1, legacy=False)
    with torch.device("meta"):
        for name in ("sd15", "sd21"):
            configs = RELEASED[name]
            unet_kw = {k: v for k, v in configs["unet"].items() if not k.startswith("_")}
            out[f"{name}_unet"] = shapes(UNet2DConditionModel(**unet_kw))
            text_kw = {k: v for k, v in configs["text_encoder"].items() if k != "architectures"}
            out[f"{name}_text_encoder"] = shapes(CLIPTextModel(CLIPTextConfig(**text_kw)))
        vae_kw = {k: v for k, v in RELEASED["sd15"]["vae"].items() if not k.startswith("_")}
        out["vae"] = shapes(AutoencoderKL(**vae_kw))

        vae_keys = shapes(LDMAutoencoder(encoder_cls, decoder_cls, 128, (1, 2, 4, 4), 2),
                          "first_stage_model.")
        sd15 = shapes(unet_cls(num_heads=8, context_dim=768, **ldm_common),
                      "model.diffusion_model.")
        clip = {"text_model." + k: v for k, v in out["sd15_text_encoder"].items()}
        clip["text_model.embeddings.position_ids"] = [1, 77]
        sd15.update({f"cond_stage_model.transformer.{k}": v for k, v in clip.items()})
        out["sd15_single_file"] = dict(sd15, **vae_keys)
        sd21 = shapes(unet_cls(num_head_channels=64, use_linear_in_transformer=True,
                               context_dim=1024, **ldm_common), "model.diffusion_model.")
        vit_h = open_clip.model.CLIP(
            embed_dim=1024, vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64,
                                                                     patch_size=14, image_size=28),
            text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=1024,
                                                 heads=16, layers=24))
        del vit_h.visual
        sd21.update(shapes(vit_h, "cond_stage_model.model."))
        out["sd21_single_file"] = dict(sd21, **vae_keys)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ldm_repo", required=True)
    parser.add_argument("--out", default="tests/data")
    args = parser.parse_args()
    torch.manual_seed(0)
    tiny = os.path.join(args.out, "sd_tiny")
    tmp = tempfile.mkdtemp()
    vocab, merges = clip_vocabulary(TINY_MERGES)
    pipes = {}
    for seed, name in ((0, "sd15"), (10, "sd21")):
        eos = 2 if name == "sd15" else len(vocab) - 1  # SD 1.5's config keeps the legacy id 2
        unet, text, vae = tiny_models(name, seed, len(vocab), eos)
        directory = os.path.join(tiny, name)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        pipes[name] = save_model_dir(directory, name, unet, text, vae, vocab, merges)
        ref = network_references(unet, text, vae, os.path.join(directory, "tokenizer"), seed + 5)
        np.savez_compressed(os.path.join(tiny, f"{name}_reference.npz"), **ref)
    tokenizer_fixtures(args.out, tmp)
    shutil.rmtree(tmp)
    pipeline_fixtures(pipes["sd15"], tiny)

    text15 = {f"transformer.text_model.{k}": v
              for k, v in pipes["sd15"].text_encoder.state_dict().items()}
    text15["transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ref = single_file_fixtures(tiny, args.ldm_repo, "sd15", text15, pipes["sd15"], 20)
    np.savez_compressed(os.path.join(tiny, "sd15_single_file_reference.npz"), **ref)

    open_clip_model = open_clip_text(len(vocab), 30)
    ids = torch.from_numpy(np.load(os.path.join(tiny, "sd21_reference.npz"))["text_ids"]).long()
    with torch.no_grad():
        penultimate = f32(open_clip_penultimate(open_clip_model, ids))
    text21 = {f"model.{k}": v for k, v in open_clip_model.state_dict().items()}
    ref = single_file_fixtures(tiny, args.ldm_repo, "sd21", text21, pipes["sd21"], 40)
    ref.update(text_ids=ids.numpy().astype(np.int32), text_penultimate=penultimate)
    np.savez_compressed(os.path.join(tiny, "sd21_single_file_reference.npz"), **ref)

    with gzip.GzipFile(os.path.join(tiny, "real_shapes.json.gz"), "wb", 9, mtime=0) as f:
        f.write(json.dumps(real_shapes(args.ldm_repo), sort_keys=True).encode())
    for root, _, files in os.walk(args.out):
        for file in files:
            path = os.path.join(root, file)
            if "sd_tiny" in path or "clip_tokenizer" in path:
                print(f"{os.path.getsize(path):>9,d}  {path}")


if __name__ == "__main__":
    main()
