"""Inception Score (Salimans et al. 2016, sec. 4):

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x),

computed on `splits` consecutive chunks of the predictions, rows [i N // splits, (i + 1) N //
splits), and reported as (mean, std) over chunks, as in the reference code (improved-gan
`inception_score/model.py`). The paper's number uses Inception-v3's logits without the output
bias, as that code computes them (`inception.FIDInceptionV3`'s default). It is the Inception
Score only for Inception-v3's class predictions; for another classifier it is a classifier
score in that classifier's labels.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, xlogy


def inception_score(logits_or_probs: np.ndarray, splits: int = 10,
                    from_logits: bool = True) -> tuple[float, float]:
    """(mean, std) over `splits` chunks of exp(mean KL(p(y|x) || p(y))); `logits_or_probs` is
    (N, num_classes), logits if `from_logits` else probabilities (0 log 0 = 0)."""
    values = np.asarray(logits_or_probs, np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected (N, num_classes); got shape {values.shape}")
    if not 1 <= splits <= len(values):
        raise ValueError(f"splits must be in [1, {len(values)}]; got {splits}")
    probs = np.exp(log_softmax(values, axis=1)) if from_logits else values
    n, scores = len(probs), []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
