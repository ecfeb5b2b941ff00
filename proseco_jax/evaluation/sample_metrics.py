"""Metrics of token samples that need no model and no corpus: pure functions of token ids.

Sample entropy (MDLM, ReMDM and ProSeCo's diversity figure): for sample n with count c_v of token v among
its L tokens, H_n = -sum_v (c_v / L) log(c_v / L) nats. The unigram entropy of a corpus, in bits per
token, is what a model that ignores context reaches. The corrections a sampler made are read off its
history of iterates: the token first decoded at each position against the final one. The NFE counts
(`fileio.NFE_KEYS`) are averaged per sample, the x-axis of the paper's figures. Every scorer (the Markov
chain's, text's) builds on these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from proseco_jax.fileio import NFE_KEYS


def sample_entropy(tokens: np.ndarray) -> np.ndarray:
    """Entropy in nats of each sample's token histogram: int tokens [N, L] -> float64 [N].

    Any integer ids work (no vocabulary size is needed).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape [N, L] with L >= 1, got shape {tokens.shape}")
    num, length = tokens.shape
    ordered = np.sort(tokens, axis=1)
    starts = np.ones_like(ordered, dtype=bool)  # first position of each run of equal ids
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run = np.cumsum(starts, axis=1) - 1 + np.arange(num)[:, None] * length
    counts = np.bincount(run.ravel(), minlength=num * length).reshape(num, length)
    probs = counts / length
    plogp = np.where(counts > 0, probs * np.log(np.where(counts > 0, probs, 1.0)), 0.0)
    return -plogp.sum(axis=1)


def unigram_entropy(samples: Sequence[Sequence[int]] | np.ndarray) -> float:
    """Mean over samples of `sample_entropy` (nats); samples may be ragged (a list of id sequences)."""
    if isinstance(samples, np.ndarray) and samples.ndim == 2:
        return float(sample_entropy(samples).mean())
    if len(samples) == 0:
        raise ValueError("unigram_entropy needs at least one sample")
    return float(np.mean([sample_entropy(np.asarray(sample).reshape(1, -1))[0] for sample in samples]))


def unigram_bits(token_arrays: Iterable[np.ndarray]) -> tuple[float, int]:
    """Entropy in bits per token of the unigram distribution of all the tokens given, and their count.

    The figure a model that ignores context reaches: -sum_v p(v) log2 p(v), p the tokens' frequencies.
    """
    counts = np.zeros(0, np.int64)
    for tokens in token_arrays:
        hist = np.bincount(np.asarray(tokens, np.int64).reshape(-1))
        if hist.size > counts.size:
            counts = np.concatenate([counts, np.zeros(hist.size - counts.size, np.int64)])
        counts[: hist.size] += hist
    total = int(counts.sum())
    if total == 0:
        raise ValueError("unigram_bits needs at least one token")
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()), total


def corrections(history: np.ndarray, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens as first decoded and where a later step rewrote them, from history int [T, ..., L].

    Returns (first int [..., L]: each position's token at the first step it was not [MASK], or mask_id
    if it never was; changed bool [..., L]: the final token differs from the first decoded one).
    """
    history = np.asarray(history)
    decoded = history != mask_id
    first_step = np.argmax(decoded, axis=0)  # [..., L]
    first = np.take_along_axis(history, first_step[None], axis=0)[0]
    first = np.where(decoded.any(axis=0), first, mask_id)
    final = history[-1]
    changed = (first != mask_id) & (final != mask_id) & (final != first)
    return first, changed


def nfe_means(columns: Mapping[str, Any]) -> dict[str, float]:
    """Mean NFE per sample (total, predictor, corrector) of each count column [N] that is all numbers.

    columns: the sampler's arrays, or `samples_io.nfe_columns` of a samples file (a count missing from
    one record is then left out).
    """
    out = {}
    for key in NFE_KEYS:
        values = columns.get(key)
        if values is not None and len(values) and all(isinstance(v, (int, float, np.number)) for v in values):
            out[key] = float(np.mean(values))
    return out
