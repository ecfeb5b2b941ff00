"""The data package's one interface on top: opens the dataset named by `config.data.name` as random-access
sources for the grain pipeline (each corpus is one module over the shared `tfds_build`).

"markov" is the embedded sparse Markov language (built offline on first use, see `markov_builder.py`);
its exact entropy is known, so validation bits per token can be read against it. "text_files", "owt"
(OpenWebText), "text8" and "lm1b" (One Billion Words) are real text, tokenised and packed into
`data.data_dir` on first use (or beforehand by `launch/prepare_data.py`) from local files, see
`text_builder.py`; their examples carry a padding mask and the tokenizer they were made with comes along
to decode samples. "sft_jsonl" holds
prompt/response pairs for fine-tuning (`sft_builder.py`): items `{'tokens', 'prompt_length'}`, and its chat
tokenizer comes along. "qm9" holds molecules as SMILES tokens with a class label (`qm9_builder.py`): items
`{'tokens', 'label', 'qed', 'ring_count'}`, and its SMILES tokenizer comes along.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from proseco_jax.config_base import Data
from proseco_jax.data import chain as markov_chain
from proseco_jax.data import markov_builder, sft_builder, text_builder
from proseco_jax.data.errors import DataError
from proseco_jax.data.tokenizers import Tokenizer

DATASETS = ("markov", *text_builder.BUILDERS, "sft_jsonl", "qm9")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Sources by split ('train', 'validation'; text8 also 'test'), items `{'tokens': int32 [L]}` (text
    corpora add `'mask': uint8 [L]`, 0 on padding; sft_jsonl adds `'prompt_length': int32`)."""

    sources: dict[str, Any]
    chain_path: str | None = None  # Markov language only: its chain.npz.
    entropy_bits_per_token: float | None = None  # Exact data entropy, where known.
    # Text only: the tokenizer the corpus was prepared with (sft_jsonl: a `chat.ChatTokenizer`).
    tokenizer: Tokenizer | None = None
    directory: str | None = None  # Text only: the prepared corpus's tfds version directory.


def load(data: Data) -> Dataset:
    """Builds (if needed) and opens the dataset; raises `DataError` with one line if it cannot."""
    if data.name == "markov":
        sources, chain_path = markov_builder.prepare_markov(data)
        chain = markov_chain.load_chain(chain_path)
        nats = markov_chain.sequence_entropy_per_token(chain, data.length)
        return Dataset(sources=sources, chain_path=chain_path, entropy_bits_per_token=nats / math.log(2.0))
    if data.name in text_builder.BUILDERS:
        prepared = text_builder.prepare_text(data)
        return Dataset(sources=prepared.sources, tokenizer=prepared.tokenizer, directory=prepared.version_dir)
    if data.name == "sft_jsonl":
        prepared = sft_builder.prepare_sft(data)
        return Dataset(sources=prepared.sources, tokenizer=prepared.tokenizer, directory=prepared.version_dir)
    if data.name == "qm9":
        # Imported here: it needs RDKit, an optional dependency (the qm9 extra) no other corpus needs.
        from proseco_jax.data import qm9_builder

        prepared = qm9_builder.prepare_qm9(data)
        return Dataset(sources=prepared.sources, tokenizer=prepared.tokenizer, directory=prepared.version_dir)
    raise DataError(f"unknown data.name {data.name!r}; expected one of {DATASETS}")
