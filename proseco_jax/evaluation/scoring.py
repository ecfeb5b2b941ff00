"""Scores of samples, whatever drew them: read a samples JSONL, score it against the Markov chain or an
evaluator LM, and read a sampling history for the tokens a corrector rewrote.

Markov language: `chain.markov_metrics` (transition error, validity, chain NLL and perplexity, entropy)
and the mean NFE per sample; held-out data scored the same way is the reference (transition error 0, the
chain's exact entropy per token next to it). Text: generative perplexity under a Flax GPT-2
(`text_metrics.token_nll`), unigram entropy, and MAUVE against reference samples when `mauve-text` is
installed. Bad input (a missing or malformed file, ids outside the vocabulary, an evaluator that does
not load) is a `UsageError` with one line naming the file and the sample.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from proseco_jax import samples_io
from proseco_jax.data import chain as markov_chain
from proseco_jax.errors import UsageError

Record = dict[str, Any]
NFE_KEYS = ("nfe", "predictor_nfe", "corrector_nfe")


def read_samples(path: str) -> list[Record]:
    """The samples (JSON objects) of a JSONL file; an empty file is a UsageError."""
    records = samples_io.read_jsonl(path)
    if not records:
        raise UsageError(f"samples file {path} holds no samples")
    return records


def token_array(records: Sequence[Record], source: str, length: int, vocab_size: int) -> np.ndarray:
    """int64 [N, length] of the records' `tokens`; a ragged, misshapen or out-of-vocabulary one fails.

    source: the file the records came from, named in the error.
    """
    rows = []
    for number, record in enumerate(records, 1):
        tokens = record.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                    for t in tokens):
            raise UsageError(f"{source} sample {number}: 'tokens' must be a list of integer ids")
        if len(tokens) != length:
            raise UsageError(f"{source} sample {number} has {len(tokens)} tokens, expected "
                             f"data.length={length}")
        bad = [t for t in tokens if not 0 <= t < vocab_size]
        if bad:
            raise UsageError(f"{source} sample {number} holds token id {bad[0]}, outside the vocabulary "
                             f"[0, {vocab_size})")
        rows.append(tokens)
    return np.asarray(rows, dtype=np.int64)


def nfe_means(columns: Mapping[str, Any]) -> dict[str, float]:
    """Mean NFE per sample (total, predictor, corrector) of each count column [N] that is all numbers.

    columns: the sampler's arrays, or `records_columns` of a samples file (a count missing from one
    record is then left out).
    """
    out = {}
    for key in NFE_KEYS:
        values = columns.get(key)
        if values is not None and len(values) and all(isinstance(v, (int, float, np.number)) for v in values):
            out[key] = float(np.mean(values))
    return out


def records_columns(records: Sequence[Record]) -> dict[str, list[Any]]:
    """The NFE counts of the records as columns (None where a record lacks one)."""
    return {key: [r.get(key) for r in records] for key in NFE_KEYS}


def held_out_tokens(source: Any, num: int) -> np.ndarray:
    """The first min(num, len(source)) sequences of a random-access split: int32 [N, L]."""
    num = min(int(num), len(source))
    return np.stack([np.asarray(source[i]["tokens"]) for i in range(num)]).astype(np.int32)


def data_reference(tokens: np.ndarray, chain: markov_chain.MarkovChain, length: int) -> Record:
    """The metrics of held-out data tokens [N, L], and the chain's exact entropy per token."""
    row: Record = dict(markov_chain.markov_metrics(tokens, chain), num_samples=int(tokens.shape[0]))
    nats = markov_chain.sequence_entropy_per_token(chain, length)
    row["chain_entropy_nats_per_token"] = nats
    row["chain_entropy_bits_per_token"] = nats / math.log(2.0)
    return row


def score_markov(records: Sequence[Record], chain: markov_chain.MarkovChain, length: int,
                 held_out: np.ndarray | None = None, *, source: str = "samples") -> Record:
    """Chain metrics and mean NFE of the records; with held-out tokens [N, L], their reference as `data`."""
    tokens = token_array(records, source, length, chain.vocab_size)
    metrics = dict(markov_chain.markov_metrics(tokens, chain), **nfe_means(records_columns(records)),
                   num_samples=len(records))
    if held_out is not None:
        metrics["data"] = data_reference(held_out, chain, length)
    return metrics


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A GPT-2 to score text with, and its tokenizer's `encode` (None: score the samples' `tokens`)."""

    module: Any
    params: Any
    config: Any
    encode: Callable[[str], list[int]] | None


def load_evaluator(directory: str) -> Evaluator:
    """The GPT-2 of a local Hugging Face directory, with its tokenizer.json when `tokenizers` is installed."""
    from proseco_jax.evaluation import gpt2

    try:
        module, params, config = gpt2.load_gpt2(directory)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load the evaluator: {e}") from None
    encode = None
    tokenizer_file = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(tokenizer_file):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            print("no retokenization (pip install tokenizers): scoring the samples' 'tokens'", flush=True)
        else:
            tokenizer = Tokenizer.from_file(tokenizer_file)
            encode = lambda text: tokenizer.encode(text).ids
    return Evaluator(module, params, config, encode)


def _text_sequences(records: Sequence[Record], source: str, evaluator: Evaluator) -> list[np.ndarray]:
    """Evaluator token ids of each record: its `text` retokenized, or (no tokenizer) its `tokens`."""
    vocab_size = evaluator.config.vocab_size
    sequences = []
    for number, record in enumerate(records, 1):
        if evaluator.encode is not None and isinstance(record.get("text"), str):
            ids = np.asarray(evaluator.encode(record["text"]), dtype=np.int64)
        elif isinstance(record.get("tokens"), list):
            ids = np.asarray(record["tokens"], dtype=np.int64)
        else:
            raise UsageError(f"{source} sample {number} has no 'text' (with a tokenizer) or 'tokens' to "
                             "score")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise UsageError(f"{source} sample {number} holds ids outside the evaluator vocabulary "
                             f"[0, {vocab_size})")
        sequences.append(ids)
    return sequences


def _score_text_records(records: Sequence[Record], source: str, evaluator: Evaluator, length: int
                        ) -> tuple[Record, list[np.ndarray]]:
    """(gen-PPL, scored tokens, entropy, count) of records cut to `length` evaluator tokens; the ids."""
    from proseco_jax.evaluation import gpt2, text_metrics

    sequences = [s[:length] for s in _text_sequences(records, source, evaluator)]
    cfg = evaluator.config
    total, count = text_metrics.token_nll(sequences, gpt2.apply_fn(evaluator.module), evaluator.params,
                                          cfg.n_positions, cfg.eos_token_id)
    if count == 0:
        raise UsageError(f"{source}: no token to score (every sample is shorter than two tokens)")
    nonempty = [s for s in sequences if s.size]
    return {"gen_ppl": float(np.exp(total / count)), "scored_tokens": count,
            "entropy": text_metrics.unigram_entropy(nonempty), "num_samples": len(records)}, sequences


def score_text(records: Sequence[Record], evaluator_dir: str, length: int,
               reference: Sequence[Record] | None = None, *, source: str = "samples",
               reference_source: str = "reference") -> Record:
    """Gen-PPL, entropy and mean NFE of the records under the GPT-2 in `evaluator_dir`; with reference
    records (human text), their scores as `data` and MAUVE between the two (when `mauve-text` is there)."""
    from proseco_jax.evaluation import gpt2, text_metrics

    evaluator = load_evaluator(evaluator_dir)
    metrics, sequences = _score_text_records(records, source, evaluator, length)
    metrics.update(nfe_means(records_columns(records)))
    if reference is not None:
        metrics["data"], ref_sequences = _score_text_records(reference, reference_source, evaluator, length)
        try:
            hidden = gpt2.apply_fn(evaluator.module, return_hidden=True)
            positions = evaluator.config.n_positions
            p = text_metrics.last_token_features(ref_sequences, hidden, evaluator.params, positions)
            q = text_metrics.last_token_features(sequences, hidden, evaluator.params, positions)
            metrics["mauve"] = text_metrics.mauve_score(p, q)
        except ImportError as e:
            print(f"no MAUVE: {e}", flush=True)
    return metrics


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


def rewrite_scores(history: np.ndarray, chain: markov_chain.MarkovChain, mask_id: int) -> dict[str, float]:
    """What the corrector changed in samples of history int [T, N, L].

    `rewritten`: mean positions per sample whose final token differs from the token first decoded there;
    `transition_error_first_decoded`: the transition error of the sequences of first decoded tokens (for
    a sampler that never rewrites, the transition error itself).
    """
    first, changed = corrections(history, mask_id)
    return {"rewritten": float(changed.sum(axis=1).mean()),
            "transition_error_first_decoded": markov_chain.forbidden_count(first, chain) / first[:, 1:].size}
