"""Opens the dataset named by `config.data.name` as random-access sources for the grain pipeline.

"markov" is the embedded sparse Markov language (built offline on first use, see `markov_builder.py`);
its exact entropy is known, so validation bits per token can be read against it. "owt" (OpenWebText,
GPT-2 tokens, L = 1024) needs the corpus prepared under `data.data_dir` beforehand; nothing is downloaded
at run time.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from proseco_jax.config_base import data_directory
from proseco_jax.data import chain as markov_chain
from proseco_jax.data import markov_builder
from proseco_jax.data.errors import DataError

DATASETS = ("markov", "owt")


@dataclasses.dataclass(frozen=True)
class Data:
    """Sources by split ('train', 'validation'), items `{'tokens': int32 [L]}`."""

    sources: dict[str, Any]
    chain_path: str | None = None  # Markov language only: its chain.npz.
    entropy_bits_per_token: float | None = None  # Exact data entropy, where known.


def load(data_config) -> Data:
    """Builds (if needed) and opens the dataset; raises `DataError` with one line if it cannot."""
    if data_config.name == "markov":
        sources, chain_path = markov_builder.prepare_markov(data_config)
        chain = markov_chain.load_chain(chain_path)
        nats = markov_chain.sequence_entropy_per_token(chain, data_config.length)
        return Data(sources=sources, chain_path=chain_path, entropy_bits_per_token=nats / math.log(2.0))
    if data_config.name == "owt":
        root = os.path.join(data_directory(data_config.data_dir), "openwebtext")
        raise DataError(
            f"OpenWebText is not prepared: expected GPT-2-tokenised array_record splits under {root} "
            "(nothing is downloaded at run time; prepare the corpus offline first)"
        )
    raise DataError(f"unknown data.name {data_config.name!r}; expected one of {DATASETS}")
