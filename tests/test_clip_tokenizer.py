"""Our CLIP BPE tokenizer gives transformers' `CLIPTokenizer` ids (padding to 77, truncation)
on a fixed prompt set: punctuation, contractions, digits, accents (composed and decomposed),
CJK, Devanagari, Greek capitals, emoji with modifiers and joiners, special tokens written in
the prompt, unusual whitespace and control characters, ligatures, over-long and exactly-75-token
prompts, the empty prompt. References: tests/data/clip_tokenizer/reference.npz
(tools/make_sd_fixtures.py), for CLIP's full 49,408-token vocabulary with SD 1.5's tokenizer
config (pad <|endoftext|>) and SD 2's (pad "!"), and for the tiny checkpoints' 2,514 tokens.
"""
import gzip
import os
import shutil

import numpy as np
import pytest

from diffusion_jax.errors import ConfigError
from diffusion_jax.tokenizer import BOS, EOS, CLIPTokenizer, normalize, special_tokens

DATA = os.path.join(os.path.dirname(__file__), "data")
REFERENCE = dict(np.load(os.path.join(DATA, "clip_tokenizer", "reference.npz")))
PROMPTS = [str(p) for p in REFERENCE["prompts"]]


def tiny_dir(name):
    return os.path.join(DATA, "sd_tiny", name, "tokenizer")


@pytest.fixture(scope="module")
def full_dirs(tmp_path_factory):
    """CLIP's full vocabulary with each SD version's tokenizer config files."""
    dirs = {}
    for name in ("sd15", "sd21"):
        directory = tmp_path_factory.mktemp(f"clip_{name}")
        for file in ("vocab.json", "merges.txt"):
            with gzip.open(os.path.join(DATA, "clip_tokenizer", file + ".gz"), "rb") as src, \
                    open(directory / file, "wb") as dst:
                shutil.copyfileobj(src, dst)
        for file in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(os.path.join(tiny_dir(name), file), directory / file)
        dirs[name] = str(directory)
    return dirs


@pytest.mark.parametrize("name", ["sd15", "sd21"])
def test_full_vocabulary_equals_transformers(full_dirs, name):
    tokenizer = CLIPTokenizer.from_dir(full_dirs[name])
    assert len(tokenizer.vocab) == 49408
    ids = tokenizer(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, REFERENCE[f"ids_{name}"])


@pytest.mark.parametrize("name", ["sd15", "sd21"])
def test_tiny_vocabulary_equals_transformers(name):
    np.testing.assert_array_equal(CLIPTokenizer.from_dir(tiny_dir(name))(PROMPTS),
                                  REFERENCE[f"ids_tiny_{name}"])


def test_padding_truncation_and_the_empty_prompt(full_dirs):
    sd15, sd21 = (CLIPTokenizer.from_dir(full_dirs[n]) for n in ("sd15", "sd21"))
    assert (sd15.bos_id, sd15.eos_id, sd15.pad_id, sd21.pad_id) == (49406, 49407, 49407, 0)
    empty = sd21([""])[0]
    assert list(empty[:3]) == [49406, 49407, 0] and not empty[3:].any()
    long = sd15(["cat " * 100])[0]  # 100 tokens: the first 75 kept, then the end token
    assert long[0] == 49406 and long[-1] == 49407 and len(set(long[1:-1])) == 1
    assert sd15.encode("cat " * 100) == [long[1]] * 100


def test_pad_token_in_an_sd2_prompt_is_the_pad_id(full_dirs):
    """SD 2's pad token "!" is a special token: every "!" of a prompt is id 0 (not "!</w>"),
    as diffusers' SD 2 pipelines tokenize; with SD 1.5's config "!!!" is one BPE word."""
    sd15, sd21 = (CLIPTokenizer.from_dir(full_dirs[n]) for n in ("sd15", "sd21"))
    assert sd21.encode("wow!!!")[-3:] == [0, 0, 0]
    assert 0 not in sd15.encode("wow!!!")


def test_normalization():
    # NFC composes e + combining acute; whitespace runs become one space; per-character lower
    # case keeps the medial sigma at the end of a word (str.lower() would give the final one).
    assert normalize("Cafe\u0301\t\n  ΟΔΟΣ") == "café οδοσ"
    assert "ΟΔΟΣ".lower() == "οδος"  # control: the whole-string lower case differs


def test_special_tokens_of_a_config():
    """A token given as {"content", "normalized": true} matches the lower-cased prompt, a plain
    string the prompt as written; the entries register in the order bos, eos, unk, pad (an
    absent one as its default plain string), a later one with the same text winning."""
    eos = {"content": EOS, "normalized": True}
    sd21 = {"eos_token": eos, "unk_token": eos, "pad_token": "!"}
    assert special_tokens(sd21) == {BOS: False, EOS: True, "!": False}
    assert special_tokens(dict(sd21, pad_token=EOS))[EOS] is False
    assert special_tokens({"eos_token": eos})[EOS] is False  # the default unk_token overrides


def test_missing_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="has no vocab.json"):
        CLIPTokenizer.from_dir(str(tmp_path))
    with pytest.raises(ConfigError, match="lacks the tokens"):
        CLIPTokenizer({"a": 0}, [])
