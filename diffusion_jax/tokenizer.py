"""CLIP's byte-level BPE tokenizer (Radford et al. 2021; the GPT-2 byte-level BPE of Radford et
al. 2019 with CLIP's pre-tokenisation), read from a checkpoint's own `tokenizer/vocab.json` and
`merges.txt`, giving the ids transformers' `CLIPTokenizer` gives.

A prompt is NFC-normalised, every run of whitespace becomes one space, and it is lower-cased
character by character; the special tokens written in it (start, end, pad; `special_tokens`)
are those tokens. The rest splits into words (runs of letters, single digits, runs of other
non-space characters, the contractions 's 't 're 've 'm 'll 'd); each word's UTF-8 bytes become
the printable characters of GPT-2's byte-to-unicode table, the last one suffixed `</w>`, and
merges.txt's pairs are applied lowest rank first until none applies. A batch is
[<|startoftext|>, first max_length - 2 tokens, <|endoftext|>], padded to `max_length` (77) with
the pad token that the checkpoint's `tokenizer_config.json` names (`<|endoftext|>` for SD 1.x,
`!` for SD 2.x).
"""
from __future__ import annotations

import functools
import json
import math
import os
import unicodedata
from typing import Optional, Sequence, Union

import numpy as np
import regex

from diffusion_jax.errors import ConfigError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WHITESPACE = regex.compile(r"\s+")
WORDS = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters: the printable
    Latin-1 bytes map to themselves, the other 68 to U+0100 onwards in byte order."""
    printable = ([*range(ord("!"), ord("~") + 1)] + [*range(ord("\xa1"), ord("\xac") + 1)]
                 + [*range(ord("\xae"), ord("\xff") + 1)])
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


def normalize(text: str) -> str:
    """NFC, whitespace runs to one space, per-character lower case (so a final capital sigma
    becomes the medial one, as the reference tokenizer does)."""
    text = WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(c.lower() for c in text)


def special_tokens(config: dict) -> dict[str, bool]:
    """{token: normalized} of a tokenizer_config.json's bos, eos, unk and pad tokens, registered
    in that order as transformers does, a later entry overriding an earlier one of the same
    text: a token given as {"content", "normalized": true} is matched in the normalised prompt,
    one given as a plain string in the prompt as written."""
    tokens = {}
    for key, default in (("bos_token", BOS), ("eos_token", EOS), ("unk_token", EOS),
                         ("pad_token", EOS)):
        token = config.get(key, default)
        if isinstance(token, dict):
            tokens[token["content"]] = bool(token.get("normalized", False))
        else:
            tokens[token] = False
    return tokens


def _splitter(tokens) -> Optional[regex.Pattern]:
    """A pattern whose `split` keeps the given tokens as pieces (longest first)."""
    tokens = sorted(tokens, key=len, reverse=True)
    return regex.compile("(" + "|".join(map(regex.escape, tokens)) + ")") if tokens else None


def _split(pattern: Optional[regex.Pattern], text: str) -> list[str]:
    return [text] if pattern is None else [p for p in pattern.split(text) if p]


class CLIPTokenizer:
    """`tokenizer(prompts) -> (B, max_length) int32 ids`; `encode(text)` gives one prompt's ids
    without the start, end and padding tokens and without truncation.

    `special`: {token: normalized} of the tokens that a prompt may contain verbatim (default the
    start, end and pad tokens, matched as written; `special_tokens` reads a checkpoint's). SD
    2's pad token `!` is one, so every `!` in an SD 2 prompt is the pad id, as in diffusers."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], *,
                 pad_token: str = EOS, max_length: int = 77,
                 special: Optional[dict[str, bool]] = None):
        special = {BOS: False, EOS: False, pad_token: False} if special is None else special
        self.raw_tokens = {t for t, normalized in special.items() if not normalized}
        self.normalized_tokens = set(special) - self.raw_tokens
        self.raw_split = _splitter(self.raw_tokens)
        self.normalized_split = _splitter(self.normalized_tokens)
        self.vocab = vocab
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.byte_chars = bytes_to_unicode()
        self.tokens = {i: t for t, i in vocab.items()}  # for decode
        self.byte_values = {c: b for b, c in self.byte_chars.items()}
        missing = [t for t in {BOS, EOS, pad_token, *special} if t not in vocab]
        if missing:
            raise ConfigError(f"CLIP vocabulary lacks the tokens {', '.join(missing)}")
        self.bos_id, self.eos_id, self.pad_id = vocab[BOS], vocab[EOS], vocab[pad_token]
        self.max_length = max_length
        self._words: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, path: str) -> "CLIPTokenizer":
        """The tokenizer of a checkpoint's `tokenizer/` directory: vocab.json, merges.txt (first
        line "#version: ..."), the special tokens of tokenizer_config.json and
        special_tokens_map.json (which wins where both name one, as in transformers) and the
        former's `model_max_length` (at most 77, CLIP's number of positions)."""
        files = {name: os.path.join(path, name) for name in ("vocab.json", "merges.txt")}
        for name, file in files.items():
            if not os.path.exists(file):
                raise ConfigError(f"tokenizer directory {path!r} has no {name}")
        with open(files["vocab.json"], encoding="utf-8") as f:
            vocab = json.load(f)
        with open(files["merges.txt"], encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
        merges = [tuple(line.split(" ")) for line in lines
                  if line and not line.startswith("#version")]
        config = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(path, name)):
                with open(os.path.join(path, name), encoding="utf-8") as f:
                    config.update(json.load(f))
        pad = config.get("pad_token", EOS)
        return cls(vocab, merges, pad_token=pad["content"] if isinstance(pad, dict) else pad,
                   max_length=min(config.get("model_max_length", 77), 77),
                   special=special_tokens(config))

    def bpe(self, word: str) -> list[int]:
        """The ids of one pre-tokenised word (its UTF-8 bytes as byte characters)."""
        if word not in self._words:
            symbols = [self.byte_chars[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            while len(symbols) > 1:
                rank, best = min((self.ranks.get(pair, math.inf), i)
                                 for i, pair in enumerate(zip(symbols, symbols[1:])))
                if rank == math.inf:
                    break
                first, second = symbols[best], symbols[best + 1]
                merged, i = [], 0
                while i < len(symbols):
                    if symbols[i] == first and symbols[i + 1:i + 2] == [second]:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(symbols[i])
                        i += 1
                symbols = merged
            self._words[word] = [self.vocab[s] for s in symbols]
        return self._words[word]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _split(self.raw_split, text):
            if piece in self.raw_tokens:
                ids.append(self.vocab[piece])
                continue
            for part in _split(self.normalized_split, normalize(piece)):
                if part in self.normalized_tokens:
                    ids.append(self.vocab[part])
                    continue
                for word in WORDS.findall(part):
                    ids.extend(self.bpe(word))
        return ids

    def __call__(self, prompts: Union[str, Sequence[str]],
                 max_length: Optional[int] = None) -> np.ndarray:
        length = max_length or self.max_length
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = np.full((len(prompts), length), self.pad_id, np.int32)
        for row, prompt in zip(ids, prompts):
            tokens = [self.bos_id, *self.encode(prompt)[:length - 2], self.eos_id]
            row[:len(tokens)] = tokens
        return ids

    def decode(self, ids) -> str:
        """The text of one row of ids: the tokens between the start token and the first end
        token, words joined by spaces (the normalised, lower-cased prompt)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if ids and ids[0] == self.bos_id:
            ids = ids[1:]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        data = bytearray()
        for token in (self.tokens[i] for i in ids):
            word = token.removesuffix("</w>")
            data += bytes(self.byte_values[c] for c in word if c in self.byte_values)
            if word != token:
                data += b" "
        return data.decode("utf-8", "replace").strip()

