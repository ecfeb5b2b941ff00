"""How a sweep scores samples: the `Scorer` protocol, the one factory that picks the scorer of a corpus
(`make_scorer`, by `config.data.name` in `SCORERS`), and reading the corpus splits a scorer compares with.

A scorer is one module implementing `Scorer`: `markov_scoring.MarkovScorer` (exact, against the chain),
`text_scoring.TextScorer` (gen-PPL under an evaluator GPT-2, entropy, MAUVE). Adding one (say, molecules:
validity, uniqueness, novelty, property means) is a new module with a scorer class and a factory
`for_corpus(config, data, evaluator_dir) -> Scorer`, and its line in `SCORERS`; its rows need a grid of
settings in `grid.GRIDS` under its `kind`.

What a scorer returns, and how the rest reads it:
- `score(tokens [N, L])` -> the metrics of one row of `results.json` (floats; None or a missing key where
  a figure cannot be computed). The sweep adds the row's own keys around them: `sampler`, `family`,
  `steps`, `corrector_steps`, `corrector_every`, `preset`, the mean NFE (`nfe`, `predictor_nfe`,
  `corrector_nfe`), `num_samples` and `seconds`; a metric must not reuse those names.
- `reference(tokens [N, L])` -> the `data` row: the held-out data scored the same way (`num_samples`
  included); the sweep adds the unigram entropy of the training tokens. It is called once, before any
  `score`, so a scorer may keep what it needs of the data (MAUVE's reference features).
- `rewrites(history [T, N, L], mask_id)` -> what the corrector rewrote (`rewritten`: mean positions per
  sample, and any figure of the tokens as first decoded), merged into the row.
- `report.format_table` prints `columns`, (row key, header, format spec) each, in order, for the data row
  and every row (a column no row has is left out, a missing figure is '-'), then `rewritten`.
- `report.plot` draws the row key `quality` (lower is better) against mean NFE in its first panel, with
  `quality_label` as the axis label (log scale when `quality_log_scale`), the data row's value and the
  MDLM rows' best as lines; its second panel draws `entropy` of rows and data. `headline.claims` reads
  `quality` and `entropy` the same way. `summary(row)` is the row's progress line, `data_summary(row)`
  the data row's.
- `render`, `mark`, `separator`, `mark_legend` and `sample_note` show samples with the corrector's
  rewrites marked (`report.correction_lines`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from proseco_jax.evaluation import markov_scoring, text_scoring

Record = dict[str, Any]


class Scorer(Protocol):
    """How a sweep scores token arrays of one corpus (see the module docstring)."""

    kind: str  # written to results.json as "scorer"; picks the grid (`grid.GRIDS`)
    quality: str  # the row key of the quality figure (lower is better) the headline and the plot read
    quality_label: str  # that figure in words: the plot's axis label
    quality_log_scale: bool  # the plot draws the quality figure on a log axis
    separator: str  # between the rendered tokens of a sample
    mark_legend: str  # how to read a marked sample
    columns: tuple[tuple[str, str, str], ...]  # (row key, header, format spec) of the table

    def reference(self, tokens: np.ndarray) -> Record: ...  # held-out data int [N, L] -> the data row
    def score(self, tokens: np.ndarray) -> Record: ...  # samples int [N, L] -> the row's metrics
    def rewrites(self, history: np.ndarray, mask_id: int) -> Record: ...  # history [T, N, L]
    def render(self, token: int) -> str: ...  # one token as the marked samples show it
    def mark(self, first: int, final: int) -> str: ...  # a rewritten token
    def sample_note(self, first: np.ndarray, final: np.ndarray) -> str: ...  # per marked sample, or ""
    def summary(self, row: Record) -> str: ...  # a row's metrics on one line
    def data_summary(self, row: Record) -> str: ...  # the data row's metrics on one line


# (config, data of `datasets.load(config.data)`, evaluator directory or None) -> the corpus's scorer.
ScorerFactory = Callable[[Any, Any, str | None], Scorer]


def _molecules(config: Any, data: Any, evaluator_dir: str | None) -> Scorer:
    # Imported here: chemistry needs RDKit, an optional dependency (the qm9 extra) no other corpus needs.
    from proseco_jax.evaluation import chemistry_scoring

    return chemistry_scoring.for_corpus(config, data, evaluator_dir)


# By `config.data.name`; any other corpus is text.
SCORERS: dict[str, ScorerFactory] = {"markov": markov_scoring.for_corpus, "qm9": _molecules}


def make_scorer(config: Any, data: Any, evaluator_dir: str | None = None) -> Scorer:
    """The scorer of the loaded corpus `data` of `config` (a `config_base.Config`): `SCORERS` by
    data.name, else text (its tokenizer, and the GPT-2 of `evaluator_dir` when given)."""
    return SCORERS.get(config.data.name, text_scoring.for_corpus)(config, data, evaluator_dir)


def held_out_tokens(source: Any, num: int) -> np.ndarray:
    """The first min(num, len(source)) sequences of a random-access split: int32 [N, L]."""
    num = min(int(num), len(source))
    return np.stack([np.asarray(source[i]["tokens"]) for i in range(num)]).astype(np.int32)


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
