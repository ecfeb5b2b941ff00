"""The tfds corpus of the embedded sparse Markov language (the chain itself is in `chain.py`): the builder
`markov_language` with one `MarkovConfig` per setting, and `prepare_markov`, which builds a corpus offline
into `data_dir` once, as array_record files read through `as_data_source` (no TensorFlow is needed), and
opens it. The config name encodes (V, k, alpha, L, seed, num_train, num_eval), so different settings never
share files. Layout under `data_dir`:

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
import dataclasses
import fcntl
import glob
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from proseco_jax.config_base import data_directory
from proseco_jax.data.chain import MarkovChain, load_chain, make_chain, sample_sequences, save_chain
from proseco_jax.data.errors import DataError, one_line

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


class RandomAccessSource(Protocol):
    """What the input pipeline reads: a sized, indexable collection of `{'tokens': int32 [L]}` dicts."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]: ...


# ------------------------------------------------------------------------------------------ tfds builder


def _format_alpha(alpha: float) -> str:
    """Spells a float with [a-z0-9] only (0.5 -> '0p5', 1e-05 -> '1em05') for use in a config name."""
    return repr(float(alpha)).replace(".", "p").replace("-", "m").replace("+", "")


@dataclasses.dataclass
class MarkovConfig(tfds.core.BuilderConfig):
    """One corpus of the Markov language; build it with `markov_config` so that the name matches."""

    vocab_size: int = 32
    successors: int = 3
    dirichlet_alpha: float = 0.5
    length: int = 64
    seed: int = 0
    num_train: int = 100_000
    num_eval: int = 2_000


def markov_config(
    vocab_size: int,
    successors: int,
    dirichlet_alpha: float,
    length: int,
    seed: int,
    num_train: int,
    num_eval: int,
) -> MarkovConfig:
    """Returns the builder config for these settings, named so that different settings never collide."""
    if length < 1 or num_train < 1 or num_eval < 1:
        raise ValueError(f"need length, num_train, num_eval >= 1, got {length}, {num_train}, {num_eval}")
    # Validates V, k, alpha and seed with make_chain's messages before anything is written.
    make_chain(vocab_size, successors, dirichlet_alpha, seed)
    name = (
        f"v{vocab_size}_k{successors}_a{_format_alpha(dirichlet_alpha)}_l{length}_s{seed}"
        f"_tr{num_train}_ev{num_eval}"
    )
    return MarkovConfig(
        name=name,
        description="Embedded sparse Markov language.",
        vocab_size=int(vocab_size),
        successors=int(successors),
        dirichlet_alpha=float(dirichlet_alpha),
        length=int(length),
        seed=int(seed),
        num_train=int(num_train),
        num_eval=int(num_eval),
    )


def _stream_seed(seed: int, stream: int) -> int:
    """An integer seed for an independent random stream derived from the data seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint32)[0])


class MarkovLanguage(tfds.core.GeneratorBasedBuilder):
    """tfds builder of the Markov language: splits `train` and `validation` of `{'tokens': int32 [L]}`.

    Always construct it with a `MarkovConfig` from `markov_config`. Examples are stored in generation
    order (shuffling is disabled), so row i of a split is row i of `sample_sequences` with that split's
    seed. The chain is written as `chain.npz` next to the array_record files.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> os.PathLike | None:
        """No source file to locate: tfds only uses it to find download checksums, and nothing is downloaded.

        tfds's own lookup imports `importlib_resources`, which tfds does not declare as a dependency.
        """
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: MarkovConfig = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {"tokens": tfds.features.Tensor(shape=(cfg.length,), dtype=np.int32)}
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, np.ndarray]]]]:
        del dl_manager  # Nothing is downloaded.
        cfg: MarkovConfig = self.builder_config
        chain = make_chain(cfg.vocab_size, cfg.successors, cfg.dirichlet_alpha, cfg.seed)
        # During download_and_prepare, self.data_dir is tfds's temporary directory, which is renamed to
        # the final one only after every split is written: the chain appears atomically with the data.
        save_chain(chain, os.path.join(self.data_dir, CHAIN_FILENAME))
        return {
            TRAIN_SPLIT: self._generate_examples(chain, cfg.num_train, _stream_seed(cfg.seed, _TRAIN_STREAM)),
            EVAL_SPLIT: self._generate_examples(chain, cfg.num_eval, _stream_seed(cfg.seed, _EVAL_STREAM)),
        }

    def _generate_examples(
        self, chain: MarkovChain, num: int, seed: int
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        tokens = sample_sequences(chain, num, self.builder_config.length, seed)
        for i in range(num):
            yield i, {"tokens": tokens[i]}


# ------------------------------------------------------------------------------------------ preparation


def _data_config_value(data_config: Any, field: str) -> Any:
    try:
        return data_config[field]
    except (KeyError, AttributeError, TypeError):
        return getattr(data_config, field)


def _builder_config_from(data_config: Any) -> MarkovConfig:
    fields = ("vocab_size", "successors", "dirichlet_alpha", "length", "seed", "num_train", "num_eval")
    return markov_config(**{f: _data_config_value(data_config, f) for f in fields})


@contextlib.contextmanager
def _exclusive_lock(data_dir: str) -> Iterator[None]:
    """Holds an exclusive flock on a file in `data_dir`, so only one process builds at a time."""
    path = os.path.join(data_dir, ".markov_language.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except OSError as e:
        raise DataError(f"data_dir {data_dir} is not writable: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """Hides tfds's per-example progress bars while building, then restores the previous setting."""
    tqdm_utils = getattr(tfds.core.utils, "tqdm_utils", None)
    was_active = getattr(tqdm_utils, "_active", True)
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        if was_active:
            tfds.enable_progress_bar()


def _is_prepared(version_dir: str) -> bool:
    return os.path.exists(os.path.join(version_dir, "dataset_info.json"))


def _build(data_dir: str, cfg: MarkovConfig) -> None:
    """Builds the corpus unless present; several processes may call this at once."""
    with _exclusive_lock(data_dir):
        builder = MarkovLanguage(data_dir=data_dir, config=cfg)
        version_dir = os.fspath(builder.data_dir)
        if _is_prepared(version_dir):  # Another process built it while we waited for the lock.
            return
        # Holding the lock, any tfds temporary directory left here is from a build that died.
        for stale in glob.glob(os.path.join(os.path.dirname(version_dir), "incomplete.*")):
            shutil.rmtree(stale, ignore_errors=True)
        logging.info("Building Markov corpus %s into %s", cfg.name, version_dir)
        with _quiet_tfds():
            builder.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )


def _check_source(source: RandomAccessSource, split: str, expected_len: int, cfg: MarkovConfig) -> None:
    if len(source) != expected_len:
        raise DataError(f"split {split} has {len(source)} examples, expected {expected_len}")
    tokens = np.asarray(source[0]["tokens"])
    if tokens.shape != (cfg.length,) or tokens.dtype != np.int32:
        got = f"{tokens.dtype}{list(tokens.shape)}"
        raise DataError(f"split {split} holds tokens {got}, expected int32[{cfg.length}]")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise DataError(f"split {split} holds token ids outside [0, {cfg.vocab_size})")


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


def prepare_markov(data_config: Any) -> tuple[dict[str, RandomAccessSource], str]:
    """Builds the Markov corpus described by `data_config` if needed and opens it for reading.

    Args:
      data_config: the `data` ConfigDict (fields data_dir, vocab_size, successors, dirichlet_alpha,
        length, seed, num_train, num_eval).

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
        cfg = _builder_config_from(data_config)
    except ValueError as e:  # Impossible settings are the user's to fix, like missing data.
        raise DataError(f"bad Markov data config: {e}") from e
    data_dir = data_directory(os.fspath(_data_config_value(data_config, "data_dir")))
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data_dir {data_dir}: {e}") from e

    try:
        version_dir = os.fspath(MarkovLanguage(data_dir=data_dir, config=cfg).data_dir)
    except Exception as e:  # tfds reads dataset_info.json of an existing version directory here.
        raise DataError(f"Markov corpus {cfg.name} under {data_dir} is corrupt: {one_line(e)}") from e
    if not _is_prepared(version_dir):
        if os.path.isdir(version_dir):
            raise DataError(f"{version_dir} exists without dataset_info.json; delete it to rebuild")
        try:
            _build(data_dir, cfg)
        except DataError:
            raise
        except OSError as e:
            raise DataError(f"cannot build Markov corpus in {data_dir}: {e}") from e

    hint = f"delete {version_dir} to rebuild"
    try:
        # A fresh builder reads the split sizes from the dataset_info.json that the build just wrote.
        builder = MarkovLanguage(data_dir=data_dir, config=cfg)
        all_sources = builder.as_data_source()
        sources = {TRAIN_SPLIT: all_sources[TRAIN_SPLIT], EVAL_SPLIT: all_sources[EVAL_SPLIT]}
        _check_source(sources[TRAIN_SPLIT], TRAIN_SPLIT, cfg.num_train, cfg)
        _check_source(sources[EVAL_SPLIT], EVAL_SPLIT, cfg.num_eval, cfg)
    except DataError as e:
        raise DataError(f"Markov corpus {cfg.name}: {e}; {hint}") from e
    except Exception as e:  # Missing or truncated array_record files fail inside tfds/array_record.
        raise DataError(f"Markov corpus {cfg.name} is unreadable: {one_line(e)}; {hint}") from e

    chain_path = os.path.join(version_dir, CHAIN_FILENAME)
    try:
        chain = load_chain(chain_path)
    except DataError as e:
        raise DataError(f"{e}; {hint}") from e
    if chain.vocab_size != cfg.vocab_size:
        raise DataError(f"{chain_path} has V={chain.vocab_size}, expected {cfg.vocab_size}; {hint}")
    _publish_chain(chain_path, chain, data_dir)
    return sources, chain_path
