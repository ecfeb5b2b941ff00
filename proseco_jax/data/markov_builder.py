"""The tfds corpus of the embedded sparse Markov language (the chain itself is in `chain.py`): the builder
`markov_language` and `prepare_markov`, which builds a corpus offline into `data_dir` once
(`tfds_build.prepare`), as array_record files read through `as_data_source` (no TensorFlow is needed), and
opens it. The config name (`markov_config`) encodes (V, k, alpha, L, seed, num_train, num_eval), so
different settings never share files. Layout under `data_dir`:

    markov_language/<config name>/1.0.0/markov_language-{train,validation}.array_record-*
    markov_language/<config name>/1.0.0/chain.npz     the chain of exactly this corpus
    chain.npz                                         a copy of the chain most recently prepared here

The per-config `chain.npz` is written inside tfds's temporary build directory and therefore appears
atomically together with the data; `prepare_markov` returns its path and callers should use that path.
The top-level `data_dir/chain.npz` is rewritten only when a different chain is prepared into the same
`data_dir`, so it names the last prepared chain, not necessarily yours.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from proseco_jax.config_base import Data
from proseco_jax.data import tfds_build
from proseco_jax.data.chain import MarkovChain, load_chain, make_chain, sample_sequences, save_chain
from proseco_jax.data.errors import DataError
from proseco_jax.data.tfds_build import RandomAccessSource, SectionConfig

CHAIN_FILENAME = "chain.npz"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"
# Independent random streams derived from the one data seed (the chain uses the seed itself).
_TRAIN_STREAM = 1
_EVAL_STREAM = 2
# The description in dataset_info.json: a constant, so that rewording the docs never changes the corpus.
_DESCRIPTION = (
    "The embedded sparse Markov language: a synthetic corpus whose true distribution is known exactly."
)


# ------------------------------------------------------------------------------------------ tfds builder


def _format_alpha(alpha: float) -> str:
    """Spells a float with [a-z0-9] only (0.5 -> '0p5', 1e-05 -> '1em05') for use in a config name."""
    return repr(float(alpha)).replace(".", "p").replace("-", "m").replace("+", "")


def markov_config(data: Data) -> SectionConfig:
    """The builder config of the Markov corpus `data` describes, named after (V, k, alpha, L, seed,
    num_train, num_eval), so that different settings never collide."""
    # Validates V, k, alpha and seed with make_chain's messages before anything is written.
    make_chain(data.vocab_size, data.successors, data.dirichlet_alpha, data.seed)
    name = (
        f"v{data.vocab_size}_k{data.successors}_a{_format_alpha(data.dirichlet_alpha)}_l{data.length}"
        f"_s{data.seed}_tr{data.num_train}_ev{data.num_eval}"
    )
    return tfds_build.section_config(data, name, "Embedded sparse Markov language.")


def _stream_seed(seed: int, stream: int) -> int:
    """An integer seed for an independent random stream derived from the data seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint32)[0])


class MarkovLanguage(tfds_build.LocalBuilder):
    """tfds builder of the Markov language: splits `train` and `validation` of `{'tokens': int32 [L]}`.

    Always construct it with a config from `markov_config`. Examples are stored in generation order
    (shuffling is disabled), so row i of a split is row i of `sample_sequences` with that split's seed.
    The chain is written as `chain.npz` next to the array_record files.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        data: Data = self.builder_config.data
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {"tokens": tfds.features.Tensor(shape=(data.length,), dtype=np.int32)}
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, np.ndarray]]]]:
        del dl_manager  # Nothing is downloaded.
        data: Data = self.builder_config.data
        chain = make_chain(data.vocab_size, data.successors, data.dirichlet_alpha, data.seed)
        # During download_and_prepare, self.data_dir is tfds's temporary directory, which is renamed to
        # the final one only after every split is written: the chain appears atomically with the data.
        save_chain(chain, os.path.join(self.data_dir, CHAIN_FILENAME))
        splits = {TRAIN_SPLIT: (data.num_train, _TRAIN_STREAM), EVAL_SPLIT: (data.num_eval, _EVAL_STREAM)}
        return {split: self._generate_examples(chain, num, _stream_seed(data.seed, stream))
                for split, (num, stream) in splits.items()}

    def _generate_examples(
        self, chain: MarkovChain, num: int, seed: int
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        tokens = sample_sequences(chain, num, self.builder_config.data.length, seed)
        for i in range(num):
            yield i, {"tokens": tokens[i]}


# ------------------------------------------------------------------------------------------ preparation


def _check_sources(sources: dict[str, RandomAccessSource], data: Data) -> None:
    for split, expected_len in ((TRAIN_SPLIT, data.num_train), (EVAL_SPLIT, data.num_eval)):
        source = sources.get(split)
        if source is None or len(source) != expected_len:
            found = "no" if source is None else len(source)
            raise DataError(f"split {split} has {found} examples, expected {expected_len}")
        tokens = np.asarray(source[0]["tokens"])
        if tokens.shape != (data.length,) or tokens.dtype != np.int32:
            got = f"{tokens.dtype}{list(tokens.shape)}"
            raise DataError(f"split {split} holds tokens {got}, expected int32[{data.length}]")
        if tokens.min() < 0 or tokens.max() >= data.vocab_size:
            raise DataError(f"split {split} holds token ids outside [0, {data.vocab_size})")


def _publish_chain(chain_path: str, chain: MarkovChain, data_dir: str) -> None:
    """Keeps `data_dir/chain.npz` equal to the chain just prepared; writes only when it differs."""
    top = os.path.join(data_dir, CHAIN_FILENAME)
    with contextlib.suppress(DataError):
        current = load_chain(top)
        if np.array_equal(current.initial, chain.initial) and np.array_equal(
            current.transition, chain.transition
        ):
            return
    try:
        save_chain(chain, top)
    except DataError as e:
        # The per-config copy (returned to the caller) is the one that matters; a read-only data_dir
        # holding prepared data stays usable.
        logging.warning("Could not update %s (use %s instead): %s", top, chain_path, e)


def prepare_markov(data: Data) -> tuple[dict[str, RandomAccessSource], str]:
    """Builds the Markov corpus described by `data` if needed and opens it for reading.

    Args:
      data: the data section (fields data_dir, vocab_size, successors, dirichlet_alpha, length, seed,
        num_train, num_eval).

    Returns:
      sources: {'train': ..., 'validation': ...}, random-access sources whose items are
        `{'tokens': np.int32 [L]}`.
      chain_path: path of this corpus's own `chain.npz` (inside its tfds version directory).

    Idempotent and cheap when the corpus exists (no lock is taken, nothing is written). Building is
    serialised across processes with a file lock and made atomic by tfds's build-then-rename.

    Raises:
      DataError: the settings are impossible (e.g. successors > vocab_size), data_dir is not writable, or
        the existing corpus or chain is missing parts or corrupt.
    """
    try:
        cfg = markov_config(data)
    except ValueError as e:  # Impossible settings are the user's to fix, like missing data.
        raise DataError(f"bad Markov data config: {e}") from e

    def announce(version_dir: str) -> None:
        logging.info("Building Markov corpus %s into %s", cfg.name, version_dir)

    prepared = tfds_build.prepare(MarkovLanguage, cfg, announce=announce,
                                  check_sources=lambda sources, _: _check_sources(sources, data))
    hint = f"delete {prepared.version_dir} to rebuild"
    chain_path = os.path.join(prepared.version_dir, CHAIN_FILENAME)
    try:
        chain = load_chain(chain_path)
    except DataError as e:
        raise DataError(f"{e}; {hint}") from e
    if chain.vocab_size != data.vocab_size:
        raise DataError(f"{chain_path} has V={chain.vocab_size}, expected {data.vocab_size}; {hint}")
    _publish_chain(chain_path, chain, data.directory)
    sources = {split: prepared.sources[split] for split in (TRAIN_SPLIT, EVAL_SPLIT)}
    return sources, chain_path
