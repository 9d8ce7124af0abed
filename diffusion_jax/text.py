"""Captions as fixed-length byte tokens: the condition of text-conditional models.

A caption is UTF-8 encoded; byte b becomes token b + 1, truncated or padded with `PAD` = 0 to a
fixed length. The empty caption (all `PAD`) is the null condition of classifier-free guidance:
dropping a caption in training and the unconditional branch at sampling are the same tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PAD = 0
VOCAB_SIZE = 257  # 256 byte values + PAD


def tokenize(caption: str, length: int) -> np.ndarray:
    """(length,) int32 tokens of `caption`: its UTF-8 bytes + 1, then PAD."""
    data = np.frombuffer(caption.encode("utf-8")[:length], np.uint8).astype(np.int32) + 1
    return np.pad(data, (0, length - len(data)), constant_values=PAD)


def tokenize_all(captions: Sequence[str], length: int) -> np.ndarray:
    """(N, length) int32 tokens of N captions."""
    return np.stack([tokenize(c, length) for c in captions]) if len(captions) else np.zeros(
        (0, length), np.int32)


def detokenize(tokens) -> str:
    """The caption of one row of tokens (PAD dropped)."""
    tokens = np.asarray(tokens)
    return bytes((tokens[tokens != PAD] - 1).astype(np.uint8).tolist()).decode("utf-8", "replace")
