"""Scores of samples, whatever drew them: read a samples JSONL, score it against the Markov chain or an
evaluator LM, and read a sampling history for the tokens a corrector rewrote.

Markov language: `chain.markov_metrics` (transition error, validity, chain NLL and perplexity, entropy)
and the mean NFE per sample; held-out data scored the same way is the reference (transition error 0, the
chain's exact entropy per token next to it). Text: generative perplexity under a Flax GPT-2
(`text_metrics.token_nll`), unigram entropy, and MAUVE against reference samples when `mauve-text` is
installed. Bad input (a missing or malformed file, ids outside the vocabulary, an evaluator that does
not load) is a `UsageError` with one line naming the file and the sample.

A sweep scores its rows through one strategy chosen by the corpus (`make_scorer`): `MarkovScorer` (exact,
against the chain) or `TextScorer` (gen-PPL under an evaluator GPT-2, MDLM's entropy of the token ids,
MAUVE when installed). Both score token arrays [N, L], give the held-out data's figures as the reference
row, count what a corrector rewrote, and render tokens for the marked samples.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

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

    @functools.cached_property
    def logits_fn(self) -> Callable[..., Any]:
        """`gpt2.apply_fn` of the module, one function object per evaluator (so its programs are reused)."""
        from proseco_jax.evaluation import gpt2

        return gpt2.apply_fn(self.module)


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
    from proseco_jax.evaluation import text_metrics

    sequences = [s[:length] for s in _text_sequences(records, source, evaluator)]
    cfg = evaluator.config
    total, count = text_metrics.token_nll(sequences, evaluator.logits_fn, evaluator.params,
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


def split_tokens(source: Any, max_sequences: int | None = None, chunk: int = 1024) -> Iterable[np.ndarray]:
    """The real tokens (padding left out where the items carry a `mask`) of the first `max_sequences`
    items of a random-access split, one int array [L'] per item, read `chunk` items at a time."""
    num = len(source) if max_sequences is None else min(int(max_sequences), len(source))
    many = getattr(source, "__getitems__", None)
    for start in range(0, num, chunk):
        indices = range(start, min(start + chunk, num))
        items = many(list(indices)) if many is not None else [source[i] for i in indices]
        for item in items:
            tokens = np.asarray(item["tokens"])
            mask = item.get("mask") if isinstance(item, Mapping) else None
            yield tokens[np.asarray(mask) > 0] if mask is not None else tokens


class Scorer(Protocol):
    """How a sweep scores token arrays of one corpus (see the module docstring)."""

    kind: str  # "markov" | "text": written to results.json
    quality: str  # the row key of the quality figure (lower is better) the headline and the plot read
    quality_label: str  # that figure in words
    separator: str  # between the rendered tokens of a sample
    mark_legend: str  # how to read a marked sample
    columns: tuple[tuple[str, str, str], ...]  # (row key, header, format) of the table

    def reference(self, tokens: np.ndarray) -> Record: ...  # held-out data int [N, L] -> the data row
    def score(self, tokens: np.ndarray) -> Record: ...  # samples int [N, L] -> the row's metrics
    def rewrites(self, history: np.ndarray, mask_id: int) -> Record: ...  # history [T, N, L]
    def render(self, token: int) -> str: ...  # one token as the marked samples show it
    def mark(self, first: int, final: int) -> str: ...  # a rewritten token
    def sample_note(self, first: np.ndarray, final: np.ndarray) -> str: ...  # per marked sample, or ""
    def summary(self, row: Record) -> str: ...  # the row's metrics on one line


@dataclasses.dataclass(frozen=True)
class MarkovScorer:
    """Exact scores against the chain that generated the data: transition error is the quality figure.
    (Rendering tokens and rows needs no chain: `MarkovScorer()` does that.)"""

    chain: markov_chain.MarkovChain | None = None
    kind = "markov"
    quality = "transition_error"
    quality_label = "transition error (fraction forbidden)"
    separator = " "  # between the rendered tokens of a sample
    mark_legend = "[tA→tB] was decoded as tA and rewritten by the corrector to tB"
    columns = (("transition_error", "trans.err", ".4f"), ("validity", "valid", ".3f"),
               ("chain_nll", "chainNLL", ".4f"), ("entropy", "entropy", ".3f"))

    def reference(self, tokens: np.ndarray) -> Record:
        return data_reference(tokens, self.chain, int(tokens.shape[1]))

    def score(self, tokens: np.ndarray) -> Record:
        return markov_chain.markov_metrics(tokens, self.chain)

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


_VISIBLE = {"\n": "⏎", "\t": "⇥", " ": "␣", "": "∅"}


class TextScorer:
    """Text samples: decoded with the corpus's tokenizer, gen-PPL under an evaluator GPT-2 (when one is
    given) of that text retokenized and cut to `max_length` evaluator tokens (MDLM's rule), entropy as
    MDLM computes it (the mean per-sample unigram entropy of the generated token ids, nats), and MAUVE
    against the held-out data's features when `mauve-text` is installed. Gen-PPL is the quality figure."""

    kind = "text"
    quality = "gen_ppl"
    quality_label = "gen-PPL under the evaluator"
    separator = ""
    mark_legend = ("[a→b] was decoded as a and rewritten by the corrector to b (⏎ newline, ␣ space, "
                   "∅ nothing)")
    columns = (("gen_ppl", "gen-PPL", ".2f"), ("mauve", "MAUVE", ".3f"), ("entropy", "entropy", ".3f"))

    def __init__(self, tokenizer: Any, evaluator: Evaluator | None, max_length: int):
        self.tokenizer = tokenizer
        self.evaluator = evaluator
        self.max_length = max_length
        self._reference_features: np.ndarray | None = None
        self._specials = {tokenizer.bos_id: "⟨bos⟩", tokenizer.eos_id: "⟨eos⟩", tokenizer.pad_id: "⟨pad⟩"}
        self._specials.pop(None, None)

    def texts(self, tokens: np.ndarray) -> list[str]:
        """The decoded text of each sample of tokens int [N, L] (special ids left out)."""
        return [self.tokenizer.decode(row.tolist()) for row in np.asarray(tokens)]

    def _scores(self, tokens: np.ndarray, source: str) -> tuple[Record, np.ndarray | None]:
        from proseco_jax.evaluation import text_metrics

        tokens = np.asarray(tokens)
        row: Record = {"entropy": text_metrics.unigram_entropy(tokens), "num_samples": int(tokens.shape[0])}
        if self.evaluator is None:
            return row, None
        records = [{"tokens": t.tolist(), "text": text} for t, text in zip(tokens, self.texts(tokens))]
        scores, sequences = _score_text_records(records, source, self.evaluator, self.max_length)
        row.update(gen_ppl=scores["gen_ppl"], scored_tokens=scores["scored_tokens"])
        features = None
        if importlib.util.find_spec("mauve") is not None and all(len(s) for s in sequences):
            from proseco_jax.evaluation import gpt2

            hidden = gpt2.apply_fn(self.evaluator.module, return_hidden=True)
            features = text_metrics.last_token_features(sequences, hidden, self.evaluator.params,
                                                        self.evaluator.config.n_positions)
        return row, features

    def reference(self, tokens: np.ndarray) -> Record:
        row, self._reference_features = self._scores(tokens, "held-out data")
        return row

    def score(self, tokens: np.ndarray) -> Record:
        from proseco_jax.evaluation import text_metrics

        row, features = self._scores(tokens, "samples")
        if features is not None and self._reference_features is not None:
            row["mauve"] = text_metrics.mauve_score(self._reference_features, features)
        return row

    def rewrites(self, history: np.ndarray, mask_id: int) -> Record:
        _, changed = corrections(history, mask_id)
        return {"rewritten": float(changed.sum(axis=-1).mean())}

    def render(self, token: int) -> str:
        token = int(token)
        return self._specials.get(token) or self.tokenizer.decode([token])

    def mark(self, first: int, final: int) -> str:
        shown = [self.render(t) for t in (first, final)]
        return "[{}→{}]".format(*(_VISIBLE.get(s) or s.replace("\n", "⏎") for s in shown))

    def sample_note(self, first: np.ndarray, final: np.ndarray) -> str:
        return ""

    def summary(self, row: Record) -> str:
        ppl = f"gen-PPL {row['gen_ppl']:.2f} | " if row.get("gen_ppl") is not None else ""
        mauve = f"MAUVE {row['mauve']:.3f} | " if row.get("mauve") is not None else ""
        return f"{ppl}{mauve}entropy {row['entropy']:.3f}"


def text_scorer(tokenizer: Any, evaluator_dir: str | None, max_length: int) -> TextScorer:
    """A `TextScorer` for samples of the corpus's `tokenizer`, with the GPT-2 of `evaluator_dir` if given.

    An evaluator without a tokenizer of its own (no tokenizer.json, or `tokenizers` missing) can only
    score GPT-2 ids: for another corpus tokenizer that is a UsageError.
    """
    evaluator = load_evaluator(evaluator_dir) if evaluator_dir else None
    if evaluator is not None and evaluator.encode is None and tokenizer.name != "gpt2":
        raise UsageError(f"the evaluator in {evaluator_dir} has no tokenizer.json (or `tokenizers` is not "
                         f"installed) to retokenize text of the {tokenizer.name!r} tokenizer")
    return TextScorer(tokenizer, evaluator, max_length)


def as_scorer(scorer: Any) -> Any:
    """A scorer as is; a `MarkovChain` as the `MarkovScorer` of that chain."""
    return MarkovScorer(scorer) if isinstance(scorer, markov_chain.MarkovChain) else scorer
