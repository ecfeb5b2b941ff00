"""Metrics of generated text under an evaluator LM: generative perplexity, and MAUVE.

Generative perplexity follows MDLM: each sample's text is retokenized with the evaluator's tokenizer,
optionally truncated to `max_length` tokens, and split into consecutive chunks of the evaluator's context
length C; within a chunk the evaluator scores every token after the first (the first has no context), so
gen-PPL = exp(sum of NLL / number of scored tokens) over all samples. When an end-of-sequence id is
given, an EOS target is scored only if it is the first EOS of its chunk (MDLM's rule: text after a
document end is not judged). Padding is never scored (MDLM scores the first pad EOS of a sample shorter
than its batch's longest, which would make a sample's score depend on its neighbours). MAUVE compares
feature clouds (the evaluator's final hidden state at each sample's last token) with the optional
`mauve-text` package. (Entropy needs no evaluator: `sample_metrics`.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# (params, ids int [B, C], mask int [B, C]) -> logits [B, C, V] (or hidden states [B, C, D] for features);
# params are an argument of the jitted computation, never a closure constant.
ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def encode_texts(texts: Sequence[str], tokenizer: Any, max_length: int | None = None) -> list[np.ndarray]:
    """Token ids int [n_i] of each text, by `tokenizer.encode(text)` or, lacking it, `tokenizer(text)`.

    A Hugging Face tokenizer works as is (its `encode` of GPT-2 adds no special tokens).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    encode = tokenizer.encode if hasattr(tokenizer, "encode") else tokenizer
    if not callable(encode):
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no encode method and is not callable")
    encoded = []
    for text in texts:
        ids = np.asarray(encode(text), dtype=np.int64).reshape(-1)
        encoded.append(ids[:max_length] if max_length is not None else ids)
    return encoded


def _chunks(sequences: Sequence[np.ndarray], context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts each sequence into chunks of at most C tokens: (ids int [M, C'], lengths int [M]), C' <= C."""
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}")
    pieces = [
        np.asarray(seq, dtype=np.int64)[start : start + context_length]
        for seq in sequences
        for start in range(0, len(seq), context_length)
    ]
    width = max((len(piece) for piece in pieces), default=0)
    ids = np.zeros((len(pieces), width), dtype=np.int64)
    for row, piece in enumerate(pieces):
        ids[row, : len(piece)] = piece
    return ids, np.array([len(piece) for piece in pieces], dtype=np.int64)


def _batches(ids: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (rows, ids [batch_size, C]) with the last batch padded by zero rows, so shapes stay static."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start : start + batch_size]
        rows = batch.shape[0]
        if rows < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - rows, ids.shape[1]), ids.dtype)])
        yield rows, batch


@functools.lru_cache(maxsize=8)
def _chunk_nll_program(logits_fn: ApplyFn) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """The jitted NLL of every next token of chunks, one per evaluator function (reused across calls):
    (params, ids int [B, C], mask [B, C]) -> NLL [B, C-1]."""

    @jax.jit
    def chunk_nll(params: Any, batch: jax.Array, mask: jax.Array) -> jax.Array:
        logits = logits_fn(params, batch, mask)[:, :-1].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1)[..., 0]

    return chunk_nll


def token_nll(
    sequences: Sequence[np.ndarray],
    logits_fn: ApplyFn,
    params: Any,
    context_length: int,
    eos_token_id: int | None = None,
    batch_size: int = 8,
) -> tuple[float, int]:
    """Evaluator NLL of token sequences: (sum of NLL in nats, number of scored tokens).

    `sequences` are int id arrays [n_i] in the evaluator's vocabulary; chunking and the tokens scored are
    as in the module docstring. `logits_fn` is e.g. `gpt2.apply_fn(module)`.
    """
    ids, lengths = _chunks(sequences, context_length)
    if ids.shape[0] == 0 or ids.shape[1] < 2:
        return 0.0, 0
    # Chunks padded on the right to a power of two (at most C): few shapes, so few compiled programs;
    # causal attention keeps the real positions' logits unchanged.
    width = min(context_length, max(16, 1 << (ids.shape[1] - 1).bit_length()))
    ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])))
    positions = np.arange(ids.shape[1])
    real = positions[None, :] < lengths[:, None]  # [M, C]
    scored = real.copy()
    if eos_token_id is not None:
        is_eos = (ids == eos_token_id) & real
        scored &= ~is_eos | (np.cumsum(is_eos, axis=1) == 1)
    scored[:, 0] = False
    chunk_nll = _chunk_nll_program(logits_fn)
    total, row = 0.0, 0
    for rows, batch in _batches(ids, batch_size):
        mask = np.zeros(batch.shape, dtype=np.int32)
        mask[:rows] = real[row : row + rows]
        nll = np.asarray(chunk_nll(params, jnp.asarray(batch, jnp.int32), jnp.asarray(mask)))  # [B, C-1]
        nll = nll[:rows]
        total += float(np.sum(nll, where=scored[row : row + rows, 1:], dtype=np.float64))
        row += rows
    return total, int(scored.sum())


def generative_perplexity(
    texts: Sequence[str],
    tokenizer: Any,
    logits_fn: ApplyFn,
    params: Any,
    context_length: int,
    eos_token_id: int | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
) -> float:
    """Gen-PPL of texts under an evaluator LM: exp(mean NLL over all scored tokens).

    Args:
      texts: generated samples, decoded to strings.
      tokenizer: the evaluator's tokenizer (an object with `encode`, or a callable text -> ids).
      logits_fn: (params, ids int [B, C], mask [B, C]) -> logits [B, C, V] of the evaluator
        (GPT-2: `gpt2.apply_fn(module)`).
      params: the evaluator's parameters, passed to `logits_fn`.
      context_length: the evaluator's context C (GPT-2: config.n_positions, 1024).
      eos_token_id: the evaluator's end-of-sequence id (GPT-2: 50256), or None to score every token.
      max_length: truncate each retokenized sample to this many tokens (MDLM: the generator's length).
      batch_size: chunks per evaluator call.
    """
    sequences = encode_texts(texts, tokenizer, max_length)
    total, count = token_nll(sequences, logits_fn, params, context_length, eos_token_id, batch_size)
    if count == 0:
        raise ValueError("no token to score: every sample is shorter than two evaluator tokens")
    return math.exp(total / count)


def last_token_features(
    sequences: Sequence[np.ndarray],
    hidden_fn: ApplyFn,
    params: Any,
    context_length: int,
    batch_size: int = 8,
) -> np.ndarray:
    """MAUVE features float32 [N, D]: the evaluator's final hidden state at each sample's last token.

    Each sample is truncated to its first `context_length` tokens (MAUVE's featurizer does the same);
    `hidden_fn` is e.g. `gpt2.apply_fn(module, return_hidden=True)`.
    """
    if any(len(seq) == 0 for seq in sequences):
        raise ValueError("every sample needs at least one token to be featurized")
    truncated = [np.asarray(seq, dtype=np.int64)[:context_length] for seq in sequences]
    ids, lengths = _chunks(truncated, context_length)  # one chunk per sample
    real = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    hidden_fn = jax.jit(hidden_fn)
    features, row = [], 0
    for rows, batch in _batches(ids, batch_size):
        mask = np.zeros(batch.shape, dtype=np.int32)
        mask[:rows] = real[row : row + rows]
        hidden = np.asarray(hidden_fn(params, jnp.asarray(batch, jnp.int32), jnp.asarray(mask)))  # [B, C, D]
        features.append(hidden[np.arange(rows), lengths[row : row + rows] - 1])
        row += rows
    return np.concatenate(features).astype(np.float32)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, **mauve_kwargs: Any) -> float:
    """MAUVE between feature sets p [N, D] (e.g. data) and q [M, D] (e.g. samples), by `mauve-text`.

    Keyword arguments go to `mauve.compute_mauve` (e.g. `num_buckets`, `seed`, `verbose`).
    """
    try:  # imported here: `mauve-text` is optional (pip install mauve-text)
        import mauve
    except ImportError:
        raise ImportError("MAUVE needs the optional package mauve-text: pip install mauve-text") from None
    result = mauve.compute_mauve(
        p_features=np.asarray(p_features), q_features=np.asarray(q_features), **mauve_kwargs
    )
    return float(result.mauve)
