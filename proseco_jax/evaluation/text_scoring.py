"""Scores of text samples under an evaluator GPT-2: generative perplexity, entropy and MAUVE.

Gen-PPL (`text_metrics.token_nll`, MDLM's rule): each sample's text retokenized by the evaluator's
tokenizer (or, without one, the sample's own GPT-2 `tokens`), cut to `length` evaluator tokens.
Entropy: the mean per-sample unigram entropy of the ids (`sample_metrics.unigram_entropy`). MAUVE
between the samples and reference text (`mauve-text`, optional), on one path: the evaluator's last-token
features of both (`mauve_features`), compared by `text_metrics.mauve_score`. `score_text` scores a
samples file's records; `TextScorer` is the sweep's `scoring.Scorer` of a text corpus. Bad input (ids
outside the evaluator's vocabulary, an evaluator that does not load) is a one-line `UsageError`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from proseco_jax import samples_io
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import gpt2, sample_metrics, text_metrics

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A GPT-2 to score text with, and its tokenizer's `encode` (None: score the samples' `tokens`)."""

    module: Any
    params: Any
    config: Any
    encode: Callable[[str], list[int]] | None

    @functools.cached_property
    def logits_fn(self) -> text_metrics.ApplyFn:
        """`gpt2.apply_fn` of the module, one function object per evaluator (so its programs are reused)."""
        return gpt2.apply_fn(self.module)

    @functools.cached_property
    def hidden_fn(self) -> text_metrics.ApplyFn:
        """The module's final hidden states (MAUVE's features), one function object per evaluator."""
        return gpt2.apply_fn(self.module, return_hidden=True)


def load_evaluator(directory: str) -> Evaluator:
    """The GPT-2 of a local Hugging Face directory, with its tokenizer.json when `tokenizers` is installed."""
    try:
        module, params, config = gpt2.load_gpt2(directory)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load the evaluator: {e}") from None
    encode = None
    tokenizer_file = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(tokenizer_file):
        try:  # imported here: `tokenizers` is optional, and without it the samples' own ids are scored
            from tokenizers import Tokenizer
        except ImportError:
            print("no retokenization (pip install tokenizers): scoring the samples' 'tokens'", flush=True)
        else:
            tokenizer = Tokenizer.from_file(tokenizer_file)
            encode = lambda text: tokenizer.encode(text).ids
    return Evaluator(module, params, config, encode)


def _sequences(records: Sequence[Record], source: str, evaluator: Evaluator) -> list[np.ndarray]:
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


def _score_records(records: Sequence[Record], source: str, evaluator: Evaluator, length: int
                   ) -> tuple[Record, list[np.ndarray]]:
    """(gen-PPL, scored tokens, entropy, count) of records cut to `length` evaluator tokens; the ids."""
    sequences = [s[:length] for s in _sequences(records, source, evaluator)]
    cfg = evaluator.config
    total, count = text_metrics.token_nll(sequences, evaluator.logits_fn, evaluator.params,
                                          cfg.n_positions, cfg.eos_token_id)
    if count == 0:
        raise UsageError(f"{source}: no token to score (every sample is shorter than two tokens)")
    nonempty = [s for s in sequences if s.size]
    return {"gen_ppl": float(np.exp(total / count)), "scored_tokens": count,
            "entropy": sample_metrics.unigram_entropy(nonempty), "num_samples": len(records)}, sequences


def mauve_features(evaluator: Evaluator, sequences: Sequence[np.ndarray]) -> np.ndarray | None:
    """MAUVE features float32 [N, D] of evaluator id sequences, or None where MAUVE cannot be computed
    (the optional `mauve-text` is not installed, or a sample has no token to featurize)."""
    if importlib.util.find_spec("mauve") is None or not all(len(s) for s in sequences):
        return None
    return text_metrics.last_token_features(sequences, evaluator.hidden_fn, evaluator.params,
                                            evaluator.config.n_positions)


def score_text(records: Sequence[Record], evaluator_dir: str, length: int,
               reference: Sequence[Record] | None = None, *, source: str = "samples",
               reference_source: str = "reference") -> Record:
    """Gen-PPL, entropy and mean NFE of the records under the GPT-2 in `evaluator_dir`; with reference
    records (human text), their scores as `data` and MAUVE between the two (when `mauve-text` is there)."""
    evaluator = load_evaluator(evaluator_dir)
    metrics, sequences = _score_records(records, source, evaluator, length)
    metrics.update(sample_metrics.nfe_means(samples_io.nfe_columns(records)))
    if reference is not None:
        metrics["data"], ref_sequences = _score_records(reference, reference_source, evaluator, length)
        p, q = mauve_features(evaluator, ref_sequences), mauve_features(evaluator, sequences)
        if p is None or q is None:
            print("no MAUVE: it needs the optional package mauve-text (pip install mauve-text) and at "
                  "least one token in every sample", flush=True)
        else:
            metrics["mauve"] = text_metrics.mauve_score(p, q)
    return metrics


_VISIBLE = {"\n": "⏎", "\t": "⇥", " ": "␣", "": "∅"}


class TextScorer:
    """The `scoring.Scorer` of a text corpus: samples decoded with the corpus's tokenizer, gen-PPL under an
    evaluator GPT-2 (when one is given) of that text retokenized and cut to `max_length` evaluator tokens
    (MDLM's rule), entropy as MDLM computes it (the mean per-sample unigram entropy of the generated token
    ids, nats), and MAUVE against the held-out data's features when `mauve-text` is installed. Gen-PPL is
    the quality figure."""

    kind = "text"
    quality = "gen_ppl"
    quality_label = "gen-PPL under the evaluator"
    quality_log_scale = True
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
        """The row's metrics of tokens int [N, L], and their MAUVE features (None without them)."""
        tokens = np.asarray(tokens)
        row: Record = {"entropy": sample_metrics.unigram_entropy(tokens), "num_samples": int(tokens.shape[0])}
        if self.evaluator is None:
            return row, None
        records = [{"tokens": t.tolist(), "text": text} for t, text in zip(tokens, self.texts(tokens))]
        scores, sequences = _score_records(records, source, self.evaluator, self.max_length)
        row.update(gen_ppl=scores["gen_ppl"], scored_tokens=scores["scored_tokens"])
        return row, mauve_features(self.evaluator, sequences)

    def reference(self, tokens: np.ndarray) -> Record:
        row, self._reference_features = self._scores(tokens, "held-out data")
        return row

    def score(self, tokens: np.ndarray) -> Record:
        row, features = self._scores(tokens, "samples")
        if features is not None and self._reference_features is not None:
            row["mauve"] = text_metrics.mauve_score(self._reference_features, features)
        return row

    def rewrites(self, history: np.ndarray, mask_id: int) -> Record:
        _, changed = sample_metrics.corrections(history, mask_id)
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

    def data_summary(self, row: Record) -> str:
        line = f"{self.summary(row)} nats"
        if "unigram_bits_per_token" in row:  # no exact entropy of a text corpus: what ignoring context gets
            line += (f" | unigram entropy of the training tokens {row['unigram_bits_per_token']:.4f} "
                     "bits/token")
        return line


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


def for_corpus(config: Any, data: Any, evaluator_dir: str | None = None) -> TextScorer:
    """The scorer of a loaded text corpus: its tokenizer, and the GPT-2 of `evaluator_dir` (gen-PPL of at
    most data.length evaluator tokens per sample); without one, entropy alone."""
    return text_scorer(data.tokenizer, evaluator_dir, config.data.length)
