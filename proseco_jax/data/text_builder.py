"""tfds corpora of real text, tokenised and packed once into array_record files under `data_dir` and read
through `as_data_source` (no TensorFlow), as the Markov corpus is (`markov_builder.py`). Three builders:

    text_files    local .txt / .jsonl / .parquet / .arrow files matching `data.files` (see text_sources.py);
                  the last `validation_fraction` of the documents are the validation split
    openwebtext   OpenWebText from local shards (`data.files`, e.g. the hub's parquet files or the
                  `datasets` cache's arrow files, field `text`), or, with no files, through
                  `datasets.load_dataset("Skylion007/openwebtext")` (online or from its cache); the last
                  `validation_documents` (100,000, as the reference) documents are the validation split
    text8         a local text8.zip: the standard 90M / 5M / 5M character split (train / validation / test),
                  cut into plain chunks of L characters (the `chars` tokenizer, no BOS/EOS: as D3PM and md4)
    lm1b          One Billion Words: the release's files (`data.files`: its directory or a glob, see
                  `text_sources.lm1b_files`), or, with no files, `datasets.load_dataset("lm1b")` (online or
                  from its cache); a sentence a line, detokenised as MDLM does; the training files are the
                  train split, the held-out files the validation split (the `test` split MDLM validates on)

Every example is `{'tokens': int32 [L], 'mask': uint8 [L]}` (mask 0 on padding), packed by `packing.py`.
Documents are tokenised by `data.num_proc` worker processes (`parallel_encode.py`). The config name
encodes every setting that changes the data (tokenizer, packing, L, the files' glob, fields and split), so
different settings never share files. Layout:

    <builder>/<config name>/1.0.0/<builder>-{train,validation[,test]}.array_record-*
    <builder>/<config name>/1.0.0/tokenizer.txt (+ tokenizer.json)   the tokenizer of exactly this data
    <builder>/<config name>/1.0.0/sources.json                       the files' names and digests, the splits

All of it is written inside tfds's temporary directory, which is renamed into place only once every
split is complete, under a file lock: an interrupted preparation leaves nothing that a later run reads,
and the rerun starts over cleanly.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from proseco_jax.config_base import Data, data_directory
from proseco_jax.data import hub, packing, tfds_build, tokenizers
from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.parallel_encode import ParallelEncoder, Progress
from proseco_jax.data.text_sources import (
    Corpus,
    check_decoding,
    describe_files,
    detokenize_lm1b,
    list_files,
    lm1b_files,
)
from proseco_jax.data.tfds_build import RandomAccessSource, SectionConfig

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SOURCES_JSON = tfds_build.SOURCES_JSON
OWT_HUB_NAME = "Skylion007/openwebtext"
LM1B_HUB_NAME = "lm1b"  # MDLM's `datasets` name; splits train and test, one sentence per row in `text`.
BPE_TRAIN_CHARS = 100_000_000  # A bpe:N tokenizer is trained on at most this much of the train split.
_TEXT8_PIECE = 1 << 20  # text8 is one long document, handed to the workers in pieces of this many chars.
_DESCRIPTION = "A text corpus tokenised and packed into fixed-length sequences with a padding mask."

Splits = dict[str, tuple[int, Callable[[], Iterator[str]]]]  # split -> (documents, their reader)


class _TextBuilder(tfds_build.LocalBuilder, skip_registration=True):
    """Tokenises and packs the documents of `_documents()`; subclasses say where they come from. Its
    config comes from `text_config`."""

    _encoder: ParallelEncoder | None = None
    text_files = True  # Its files are read as UTF-8 (their undecodable bytes are counted).

    def _info(self) -> tfds.core.DatasetInfo:
        length = self.builder_config.data.length
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                "mask": tfds.features.Tensor(shape=(length,), dtype=np.uint8),
            }),
            disable_shuffling=True,
        )

    def _documents(self) -> tuple[Splits, list[str]]:
        """The splits' documents and the files they are read from."""
        raise NotImplementedError

    @classmethod
    def local_files(cls, cfg: Data) -> list[str]:
        """The source files of `cfg` that are here now ([] if none): what a prepared corpus is checked
        against."""
        if not cfg.files:
            return []
        return sorted(p for p in glob.glob(cfg.files, recursive=True) if os.path.isfile(p))

    @classmethod
    def check_inputs(cls, cfg: Data) -> None:
        """Raises DataError before anything is built if the source files are plainly not there."""
        list_files(cfg.files)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, np.ndarray]]]]:
        del dl_manager  # Nothing is downloaded.
        splits, files = self._documents()
        if self.text_files:
            check_decoding(files, self.builder_config.data.max_decode_errors, self.name)
        tokenizer = self._tokenizer(splits[TRAIN][1])
        # self.data_dir is tfds's temporary directory here: these files appear together with the data.
        tokenizers.record(tokenizer, self.data_dir)
        sources = {"files": describe_files(files) if files else [],
                   "documents": {split: n for split, (n, _) in splits.items()}}
        with open(os.path.join(self.data_dir, SOURCES_JSON), "w", encoding="utf-8") as f:
            json.dump(sources, f, indent=1)
        self._encoder = ParallelEncoder(tokenizer, _num_proc(self.builder_config.data))
        return {split: self._generate_examples(split, n, read, tokenizer)
                for split, (n, read) in splits.items()}

    def _tokenizer(self, read_train: Callable[[], Iterator[str]]) -> tokenizers.Tokenizer:
        cfg: Data = self.builder_config.data
        if not cfg.tokenizer.startswith("bpe:"):
            return tokenizers.load(cfg.tokenizer, cfg.tokenizer_path)
        print(f"{self.name}: training the {cfg.tokenizer} tokenizer on at most {BPE_TRAIN_CHARS:,} "
              "characters of the train split", flush=True)
        tokenizer = tokenizers.train_bpe(cfg.tokenizer, _first_chars(read_train(), BPE_TRAIN_CHARS))
        print(f"{self.name}: trained {cfg.tokenizer}, {tokenizer.vocab_size:,} ids", flush=True)
        return tokenizer

    def _generate_examples(self, split: str, num_documents: int, read: Callable[[], Iterator[str]],
                           tokenizer: tokenizers.Tokenizer) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        cfg: Data = self.builder_config.data
        progress = Progress(f"{self.name} {split}", num_documents)
        ids = self._encoder.encode(read(), progress)
        if cfg.packing == "wrap":
            ones = np.ones(cfg.length, np.uint8)
            records = ((block, ones) for block in packing.wrap(ids, cfg.length, tokenizer.bos_id,
                                                               tokenizer.eos_id))
        else:
            records = packing.pad(ids, cfg.length, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        count = 0
        for count, (tokens, mask) in enumerate(records, 1):
            yield count - 1, {"tokens": tokens, "mask": mask}
        progress.finish(count)
        if count == 0:
            raise DataError(f"{self.name}: the {split} split ({progress.documents:,} documents, "
                            f"{progress.tokens:,} tokens) is shorter than one sequence of data.length="
                            f"{cfg.length}; give more text or a shorter length")

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """tfds's build; then the tokenising processes are stopped, whether it succeeded or not."""
        try:
            super().download_and_prepare(*args, **kwargs)
        finally:
            if self._encoder is not None:
                self._encoder.close()


def _num_proc(data: Data) -> int:
    """Tokenising processes: data.num_proc, 0 meaning one per CPU core this process may use."""
    return data.num_proc or len(os.sched_getaffinity(0))


def _first_chars(docs: Iterator[str], limit: int) -> Iterator[str]:
    total = 0
    for doc in docs:
        yield doc[: limit - total]
        total += len(doc)
        if total >= limit:
            return


def _document_splits(corpus: Corpus, num_validation: int) -> Splits:
    n = corpus.size
    return {TRAIN: (n - num_validation, functools.partial(corpus.read, 0, n - num_validation)),
            VALIDATION: (num_validation, functools.partial(corpus.read, n - num_validation, n))}


class TextFiles(_TextBuilder, skip_registration=True):
    """Local text files; the last `validation_fraction` of the documents (at least one) are held out."""

    name = "text_files"

    def _documents(self) -> tuple[Splits, list[str]]:
        cfg: Data = self.builder_config.data
        paths = list_files(cfg.files)
        corpus = Corpus.open(paths, cfg.text_field, cfg.document_per)
        n = corpus.size
        if n < 2:
            raise DataError(f"text_files needs at least 2 documents to hold one out for validation, found "
                            f"{n} in {len(paths)} file(s); set data.document_per=line or give more files")
        return _document_splits(corpus, min(n - 1, max(1, math.ceil(cfg.validation_fraction * n)))), paths


def _hub_files(hub_name: str, corpus: str, split: str) -> list[str]:
    """The arrow files of the `datasets` cache that hold `split` of `hub_name` (downloaded if need be)."""
    return [f["filename"] for f in hub.load_dataset(hub_name, split, corpus, "local files").cache_files]


class OpenWebText(_TextBuilder, skip_registration=True):
    """OpenWebText; the last `validation_documents` documents are the validation split (the reference's
    `train[-100000:]`), read in the order of the sorted shard names as `datasets` concatenates them."""

    name = "openwebtext"

    @classmethod
    def check_inputs(cls, cfg: Data) -> None:
        if cfg.files:
            list_files(cfg.files)
        else:
            hub.datasets_library("OpenWebText", "local files")

    def _documents(self) -> tuple[Splits, list[str]]:
        cfg: Data = self.builder_config.data
        paths = list_files(cfg.files) if cfg.files else _hub_files(OWT_HUB_NAME, "OpenWebText", TRAIN)
        corpus = Corpus.open(paths, cfg.text_field, "file")
        if corpus.size <= cfg.validation_documents:
            raise DataError(f"OpenWebText has {corpus.size:,} documents, not more than "
                            f"data.validation_documents={cfg.validation_documents:,}")
        return _document_splits(corpus, cfg.validation_documents), paths


def _detokenized(corpus: Corpus) -> Callable[[], Iterator[str]]:
    """A reader of the corpus's sentences, stripped and detokenised as MDLM does."""
    return lambda: (detokenize_lm1b(line.strip()) for line in corpus.read(0, corpus.size))


class LM1B(_TextBuilder, skip_registration=True):
    """One Billion Words, one sentence per document, in file order: train = training-monolingual files,
    validation = heldout-monolingual files (the split MDLM's LM1B runs validate on, its `test`)."""

    name = "lm1b"

    @classmethod
    def check_inputs(cls, cfg: Data) -> None:
        if cfg.files:
            lm1b_files(cfg.files)
        else:
            hub.datasets_library("LM1B", "local files")

    def _documents(self) -> tuple[Splits, list[str]]:
        cfg: Data = self.builder_config.data
        if cfg.files:
            parts = lm1b_files(cfg.files)
            corpora = [Corpus.open(paths, cfg.text_field, "line") for paths in parts]
        else:
            parts = [_hub_files(LM1B_HUB_NAME, "LM1B", split) for split in (TRAIN, TEST)]
            corpora = [Corpus.open(paths, "text", "file") for paths in parts]
        splits = {split: (corpus.size, _detokenized(corpus))
                  for split, corpus in zip((TRAIN, VALIDATION), corpora)}
        return splits, [p for paths in parts for p in paths]

    @classmethod
    def local_files(cls, cfg: Data) -> list[str]:
        try:
            return [p for paths in lm1b_files(cfg.files) for p in paths] if cfg.files else []
        except DataError:
            return []


def _read_text8(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            member = "text8" if "text8" in names else names[0] if len(names) == 1 else None
            if member is None:
                raise DataError(f"{path} holds {names}, not a member named text8")
            return z.read(member).decode("ascii")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(f"cannot read text8 from {path}: {one_line(e)}") from None


def _pieces(text: str) -> Iterator[str]:
    return (text[i : i + _TEXT8_PIECE] for i in range(0, len(text), _TEXT8_PIECE))


class Text8(_TextBuilder, skip_registration=True):
    """text8: characters [0, 90%), [90%, 95%), [95%, 100%) (90M / 5M / 5M of the real file)."""

    name = "text8"
    text_files = False  # text8.zip is read as strict ASCII.

    @classmethod
    def check_inputs(cls, cfg: Data) -> None:
        if not os.path.isfile(cfg.files):
            raise DataError(f"text8: {cfg.files} does not exist; put text8.zip there or set data.files")

    def _documents(self) -> tuple[Splits, list[str]]:
        path = self.builder_config.data.files
        text = _read_text8(path)
        n = len(text)
        parts = {TRAIN: text[: n * 9 // 10], VALIDATION: text[n * 9 // 10 : n * 19 // 20],
                 TEST: text[n * 19 // 20 :]}
        splits = {s: (-(-len(t) // _TEXT8_PIECE), functools.partial(_pieces, t)) for s, t in parts.items()}
        return splits, [path]


BUILDERS: dict[str, type[_TextBuilder]] = {"text_files": TextFiles, "owt": OpenWebText, "text8": Text8,
                                           "lm1b": LM1B}
# The settings that change each corpus's data, besides tokenizer, packing and length.
_SETTINGS = {"text_files": ("files", "text_field", "document_per", "validation_fraction"),
             "owt": ("files", "text_field", "validation_documents"), "text8": ("files",), "lm1b": ("files",)}


def text_config(data: Data) -> SectionConfig:
    """The builder config of the text corpus `data` describes (name = settings' digest); its section has
    the paths made absolute, as the builder reads them."""
    kind, tokenizer = data.name, data.tokenizer
    tokenizers.vocab_size_of(tokenizer)  # Unknown names fail here, before anything is written.
    files = data.files
    if kind == "text8" and not files:
        files = os.path.join(data_directory(data.data_dir), "text8.zip")
    if kind == "text_files" and not files:
        raise DataError("data.name=text_files needs data.files, a glob of local text files")
    tokenizer_path = data.tokenizer_path if tokenizer in ("gpt2", "bert") else ""
    data = data.replace(files=_absolute(files), tokenizer_path=_absolute(tokenizer_path))
    settings = {k: getattr(data, k) for k in (*_SETTINGS[kind], "files", "tokenizer", "tokenizer_path",
                                              "packing", "length")}
    # Paths enter the name as written (made absolute), not their contents: hosts that only read a corpus
    # prepared elsewhere find it without the source files (`tfds_build.check_files_unchanged` guards edits).
    digest = tfds_build.settings_digest(settings)
    name = f"{tokenizer.replace(':', '')}_{data.packing}_l{data.length}_{digest}"
    return tfds_build.section_config(data, name, f"{kind} tokenised with {tokenizer}.")


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else ""


@dataclasses.dataclass(frozen=True)
class PreparedText:
    """A prepared corpus: its splits as random-access sources, where it lives, and its tokenizer."""

    sources: dict[str, RandomAccessSource]
    version_dir: str
    tokenizer: tokenizers.Tokenizer


def _check_sources(sources: dict[str, RandomAccessSource], cfg: Data, vocab_size: int) -> None:
    for split, source in sources.items():
        if len(source) == 0:
            raise DataError(f"split {split} is empty")
        record = source[0]
        tokens, mask = np.asarray(record["tokens"]), np.asarray(record["mask"])
        if tokens.shape != (cfg.length,) or tokens.dtype != np.int32 or mask.shape != (cfg.length,):
            raise DataError(f"split {split} holds tokens {tokens.dtype}{list(tokens.shape)}, expected "
                            f"int32[{cfg.length}] with a mask")
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise DataError(f"split {split} holds token ids outside [0, {vocab_size})")


def prepare_text(data: Data) -> PreparedText:
    """Builds the text corpus `data` describes if needed (once per settings) and opens it.

    Args:
      data: the data section (name in BUILDERS, tokenizer, tokenizer_path, packing, length, files,
        text_field, document_per, validation_fraction, validation_documents, num_proc, data_dir).

    Raises:
      DataError (one line): no files match, a tokenizer that is unknown or does not parse, a corpus
        shorter than one sequence, data_dir not writable, or prepared data that is damaged.
    """
    builder_cls = BUILDERS[data.name]
    cfg = text_config(data)
    recorded: tokenizers.Tokenizer | None = None  # The tokenizer saved with the data.

    def check_sources(sources: dict[str, RandomAccessSource], version_dir: str) -> None:
        nonlocal recorded
        recorded = tokenizers.load_recorded(version_dir)
        _check_sources(sources, cfg.data, recorded.vocab_size)

    def announce(version_dir: str) -> None:
        print(f"preparing {builder_cls.name}/{cfg.name} in {version_dir} with {_num_proc(data)} tokenising "
              "process(es)", flush=True)

    prepared = tfds_build.prepare(
        builder_cls, cfg, announce=announce, check_inputs=lambda: builder_cls.check_inputs(cfg.data),
        check_prepared=lambda version_dir: tfds_build.check_files_unchanged(
            version_dir, builder_cls.local_files(cfg.data), cfg.data.files),
        check_sources=check_sources)
    return PreparedText(sources=prepared.sources, version_dir=prepared.version_dir, tokenizer=recorded)
