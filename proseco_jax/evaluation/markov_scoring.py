"""Exact scores of samples of the embedded Markov language, against the chain that generated its data.

`markov_metrics` gives transition error (the quality figure: the fraction of transitions the chain
forbids), validity, chain NLL and perplexity, and sample entropy; held-out data scored the same way is
the reference row, with the chain's exact entropy per token next to it (`data_metrics`). What a corrector
rewrote is scored too: the transition error of the tokens as first decoded, before any rewrite
(`rewrite_scores`). `score_markov` scores a samples file's records; `MarkovScorer` is the sweep's
`scoring.Scorer` of this corpus.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from proseco_jax import samples_io
from proseco_jax.data import chain as markov_chain
from proseco_jax.evaluation import sample_metrics

Record = dict[str, Any]


def check_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Validates int tokens [N, L] (N, L >= 1, ids in [0, vocab_size)); returns them as int64."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [N, L], got shape {tokens.shape}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be non-empty, got shape {tokens.shape}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return tokens.astype(np.int64)


def markov_metrics(tokens: np.ndarray, chain: markov_chain.MarkovChain) -> dict[str, float]:
    """Scores int tokens [N, L] (ids in [0, V)) against the chain; raises ValueError on other tokens.

    A sample x_0..x_{L-1} has probability initial(x_0) prod_i T(x_{i-1}, x_i). Returns floats:
    `transition_error`, the fraction of all transitions that are forbidden (the first token is not a
    transition, so with L = 1 it is 0); `validity`, the fraction of samples of nonzero probability (no
    forbidden transition and initial(x_0) > 0); `chain_nll`, the mean NLL in nats per event of nonzero
    probability (the first token and every allowed transition; forbidden events are counted by
    transition_error and left out, as they would make it infinite; inf if no event is left); `chain_ppl`
    = exp(chain_nll); `entropy`, the mean `sample_entropy`. On data drawn from the chain, chain_nll
    estimates `sequence_entropy_per_token`.
    """
    tokens = check_tokens(tokens, chain.vocab_size)
    first_prob = chain.initial[tokens[:, 0]]  # [N]
    step_prob = markov_chain.step_probs(chain.transition, tokens)  # [N, L-1]
    forbidden = step_prob == 0.0
    allowed_first = first_prob > 0.0
    valid = ~forbidden.any(axis=1) & allowed_first
    nll_sum = -np.log(first_prob[allowed_first]).sum() - np.log(step_prob[~forbidden]).sum()
    num_scored = int(allowed_first.sum()) + int((~forbidden).sum())
    chain_nll = float(nll_sum / num_scored) if num_scored else float("inf")
    return {
        "transition_error": float(forbidden.mean()) if forbidden.size else 0.0,
        "validity": float(valid.mean()),
        "chain_nll": chain_nll,
        "chain_ppl": float(np.exp(chain_nll)),
        "entropy": float(sample_metrics.sample_entropy(tokens).mean()),
    }


def data_metrics(tokens: np.ndarray, chain: markov_chain.MarkovChain) -> Record:
    """The metrics of held-out data tokens [N, L], and the chain's exact entropy per token at length L."""
    row: Record = dict(markov_metrics(tokens, chain), num_samples=int(tokens.shape[0]))
    nats = markov_chain.sequence_entropy_per_token(chain, int(tokens.shape[1]))
    row["chain_entropy_nats_per_token"] = nats
    row["chain_entropy_bits_per_token"] = nats / math.log(2.0)
    return row


def score_markov(records: Sequence[Record], chain: markov_chain.MarkovChain, length: int,
                 held_out: np.ndarray | None = None, *, source: str = "samples") -> Record:
    """Chain metrics and mean NFE of the records; with held-out tokens [N, L], their metrics as `data`.

    source: the file the records came from, named in a UsageError for bad tokens.
    """
    tokens = samples_io.token_array(records, source, length, chain.vocab_size)
    metrics = dict(markov_metrics(tokens, chain),
                   **sample_metrics.nfe_means(samples_io.nfe_columns(records)), num_samples=len(records))
    if held_out is not None:
        metrics["data"] = data_metrics(held_out, chain)
    return metrics


def rewrite_scores(history: np.ndarray, chain: markov_chain.MarkovChain, mask_id: int) -> dict[str, float]:
    """What the corrector changed in samples of history int [T, N, L].

    `rewritten`: mean positions per sample whose final token differs from the token first decoded there;
    `transition_error_first_decoded`: the transition error of the sequences of first decoded tokens (for
    a sampler that never rewrites, the transition error itself).
    """
    first, changed = sample_metrics.corrections(history, mask_id)
    return {"rewritten": float(changed.sum(axis=1).mean()),
            "transition_error_first_decoded": markov_chain.forbidden_count(first, chain) / first[:, 1:].size}


@dataclasses.dataclass(frozen=True)
class MarkovScorer:
    """The `scoring.Scorer` of the Markov language: exact scores against `chain`; transition error is the
    quality figure, tokens render as `tN`."""

    chain: markov_chain.MarkovChain
    kind = "markov"
    quality = "transition_error"
    quality_label = "transition error (fraction forbidden)"
    quality_log_scale = False
    separator = " "
    mark_legend = "[tA→tB] was decoded as tA and rewritten by the corrector to tB"
    columns = (("transition_error", "trans.err", ".4f"), ("validity", "valid", ".3f"),
               ("chain_nll", "chainNLL", ".4f"), ("entropy", "entropy", ".3f"))

    def reference(self, tokens: np.ndarray) -> Record:
        return data_metrics(tokens, self.chain)

    def score(self, tokens: np.ndarray) -> Record:
        return markov_metrics(tokens, self.chain)

    def rewrites(self, history: np.ndarray, mask_id: int) -> Record:
        return rewrite_scores(history, self.chain, mask_id)

    def render(self, token: int) -> str:
        return f"t{token}"

    def mark(self, first: int, final: int) -> str:
        return f"[t{first}→t{final}]"

    def sample_note(self, first: np.ndarray, final: np.ndarray) -> str:
        before = markov_chain.forbidden_count(first, self.chain)
        after = markov_chain.forbidden_count(final, self.chain)
        return f"forbidden transitions: {before} as first decoded, {after} after correction"

    def summary(self, row: Record) -> str:
        first = row.get("transition_error_first_decoded", row["transition_error"])
        return (f"transition error {row['transition_error']:.4f} (as first decoded {first:.4f}) | "
                f"entropy {row['entropy']:.3f}")

    def data_summary(self, row: Record) -> str:
        return (f"transition error {row['transition_error']:.4f} | entropy {row['entropy']:.3f} nats | "
                f"chain NLL {row['chain_nll']:.4f} (chain entropy {row['chain_entropy_nats_per_token']:.4f})")


def for_corpus(config: Any, data: Any, evaluator_dir: str | None = None) -> MarkovScorer:
    """The scorer of a loaded Markov corpus (`datasets.load(config.data)`): against its chain.npz.
    (The Markov language takes no evaluator; `evaluator_dir` is part of the factory signature.)"""
    del config, evaluator_dir
    return MarkovScorer(markov_chain.load_chain(data.chain_path))
