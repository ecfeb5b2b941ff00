"""A tfds corpus of supervised fine-tuning pairs: (prompt, response) conversations tokenised once into
array_record files under `data_dir` and read through `as_data_source` (no TensorFlow), as `text_builder.py`.

Records come from local JSONL files (`data.files`, one JSON object per non-blank line) or, with no files,
from a Hugging Face dataset through the `datasets` library (`data.hub_dataset`, online or from its cache;
that path is not exercised offline). A record is either

    {"prompt": "...", "response": "..."}                     (field names: data.prompt_field/response_field)
    {"messages": [{"role": "user", "content": "..."}, ...]}   (data.messages_field; the last message must be
                                                              the assistant's answer, the response)

and becomes, through the chat template of `data.tokenizer_path` (`chat.ChatTokenizer`),

    {'tokens': int32 [L], 'prompt_length': int32}    tokens = [prompt | response ... EOS | EOS padding]

with L = data.length. As in LLaDA's SFT the EOS padding belongs to the response (the loss scores it); a
response longer than what the prompt leaves of L is cut at L. The last `validation_fraction` of the records
(at least one) is the validation split. The config name is a digest of every setting that changes the data;
the tokenizer's files are copied next to the data (`tokenizer/`), and a prepared corpus whose source files
or tokenizer changed since is refused. Everything is written in tfds's temporary directory, renamed into
place once complete, under a file lock (`tfds_build.build_once`): a reader never sees half a corpus.
"""

from __future__ import annotations

import dataclasses
import filecmp
import functools
import glob
import json
import math
import os
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from proseco_jax.config_base import Data
from proseco_jax.data import hub, tfds_build
from proseco_jax.data.chat import FILES as TOKENIZER_FILES
from proseco_jax.data.chat import ChatTokenizer
from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.text_sources import check_decoding, describe_files, list_files
from proseco_jax.data.tfds_build import RandomAccessSource, SectionConfig

TRAIN, VALIDATION = "train", "validation"
SOURCES_JSON = tfds_build.SOURCES_JSON
TOKENIZER_DIR = "tokenizer"
_DESCRIPTION = "Prompt/response pairs tokenised with a chat template and padded with EOS to a fixed length."


# ---------------------------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Records:
    """The corpus's records in order: `count` of them, `read(start, stop)` yields (where, record) pairs."""

    count: int
    read: Any  # Callable[[int, int], Iterator[tuple[str, Any]]]


def _jsonl_counts(paths: list[str]) -> list[int]:
    counts = []
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                counts.append(sum(1 for line in f if line.strip()))
        except OSError as e:
            raise DataError(f"cannot read {p}: {one_line(e)}") from None
    return counts


def _read_jsonl(paths: list[str], counts: list[int], start: int, stop: int) -> Iterator[tuple[str, Any]]:
    first = 0
    for path, count in zip(paths, counts):
        lo, hi = max(start - first, 0), min(stop - first, count)
        first += count
        if lo >= hi:
            continue
        k = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if k >= hi:
                    break
                if k >= lo:
                    where = f"{path}:{number}"
                    try:
                        yield where, json.loads(line)
                    except ValueError as e:
                        raise DataError(f"{where}: not JSON ({one_line(e)})") from None
                k += 1


def _hub_records(name: str) -> Records:
    """The rows of a Hugging Face dataset ("org/name" or "org/name:split", default split train)."""
    rows = hub.load_dataset(name, "train", "the SFT data", "local JSONL files")

    def read(start: int, stop: int) -> Iterator[tuple[str, Any]]:
        for i in range(start, stop):
            yield f"{name}[{i}]", rows[i]

    return Records(len(rows), read)


def open_records(cfg: Data) -> tuple[Records, list[str]]:
    """The records `cfg` names and the local files they come from (none for a hub dataset)."""
    if not cfg.files:
        return _hub_records(cfg.hub_dataset), []
    paths = list_files(cfg.files)
    check_decoding(paths, cfg.max_decode_errors, "sft_jsonl")
    counts = _jsonl_counts(paths)
    return Records(sum(counts), functools.partial(_read_jsonl, paths, counts)), paths


def conversation(record: Any, where: str, cfg: Data) -> tuple[list[dict[str, Any]], str]:
    """(the messages before the answer, the answer) of one record; DataError naming `where` if malformed."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object")
    if cfg.messages_field in record:
        messages = record[cfg.messages_field]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: {cfg.messages_field!r} is not a non-empty list of messages")
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise DataError(f"{where}: the last of {cfg.messages_field!r} is not an assistant message (the "
                            "response)")
        if not isinstance(last.get("content"), str):
            raise DataError(f"{where}: the assistant message has no string 'content' (the response)")
        return list(messages[:-1]), last["content"]
    response = record.get(cfg.response_field)
    if not isinstance(response, str):
        fields = ", ".join(sorted(record)) or "none"
        raise DataError(f"{where}: no string field {cfg.response_field!r} (the response) and no "
                        f"{cfg.messages_field!r} (fields: {fields})")
    prompt = record.get(cfg.prompt_field)
    if not isinstance(prompt, str):
        raise DataError(f"{where}: no string field {cfg.prompt_field!r} (the prompt)")
    return [{"role": "user", "content": prompt}], response


def encode_example(tokenizer: ChatTokenizer, record: Any, where: str, cfg: Data
                   ) -> tuple[dict[str, np.ndarray], bool]:
    """(`{'tokens': int32 [L], 'prompt_length': int32}`, whether the response was cut at L) of one record;
    EOS padding after the response."""
    before, answer = conversation(record, where, cfg)
    try:
        ids, prompt_length = tokenizer.example_ids(before, answer)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    if prompt_length >= cfg.length:
        raise DataError(f"{where}: the prompt is {prompt_length} tokens, which leaves no room for the "
                        f"response in data.length={cfg.length}")
    if cfg.vocab_size in ids:
        raise DataError(f"{where}: the text holds the [MASK] token (id {cfg.vocab_size} = data.vocab_size)")
    tokens = np.full(cfg.length, tokenizer.eos_id, np.int32)
    tokens[: min(len(ids), cfg.length)] = ids[: cfg.length]
    return {"tokens": tokens, "prompt_length": np.int32(prompt_length)}, len(ids) > cfg.length


def _split(count: int, fraction: float) -> tuple[int, int]:
    """(train, validation) record counts: the last `fraction` (at least one) is held out."""
    if count < 2:
        raise DataError(f"sft_jsonl needs at least 2 records to hold one out for validation, found {count}")
    held_out = min(count - 1, max(1, math.ceil(fraction * count)))
    return count - held_out, held_out


# ---------------------------------------------------------------------------------------------- builder


class SFTJsonl(tfds_build.LocalBuilder, skip_registration=True):
    """Tokenises the records of `open_records` with the chat template; train then validation split."""

    name = "sft_jsonl"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(self.builder_config.data.length,), dtype=np.int32),
                "prompt_length": tfds.features.Scalar(dtype=np.int32),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, np.ndarray]]]]:
        del dl_manager  # Nothing is downloaded.
        cfg: Data = self.builder_config.data
        records, files = open_records(cfg)
        n_train, n_val = _split(records.count, cfg.validation_fraction)
        tokenizer = ChatTokenizer.load(cfg.tokenizer_path)
        # self.data_dir is tfds's temporary directory here: these files appear together with the data.
        copy = os.path.join(self.data_dir, TOKENIZER_DIR)
        os.makedirs(copy)
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(tokenizer.origin, name)):
                shutil.copyfile(os.path.join(tokenizer.origin, name), os.path.join(copy, name))
        with open(os.path.join(self.data_dir, SOURCES_JSON), "w", encoding="utf-8") as f:
            json.dump({"files": describe_files(files) if files else [], "hub_dataset": cfg.hub_dataset,
                       "records": {TRAIN: n_train, VALIDATION: n_val}}, f, indent=1)
        return {TRAIN: self._generate_examples(records, 0, n_train, tokenizer),
                VALIDATION: self._generate_examples(records, n_train, n_train + n_val, tokenizer)}

    def _generate_examples(self, records: Records, start: int, stop: int, tokenizer: ChatTokenizer
                           ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        cut = 0
        for i, (where, record) in enumerate(records.read(start, stop)):
            example, was_cut = encode_example(tokenizer, record, where, self.builder_config.data)
            cut += was_cut
            yield i, example
        if cut:
            print(f"sft_jsonl: {cut} of {stop - start} responses were cut at data.length="
                  f"{self.builder_config.data.length}", flush=True)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else ""


def _tokenizer_location(path: str) -> str:
    """A local tokenizer directory made absolute; a hub id as written."""
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.exists(expanded) or path.startswith((".", "/", "~")) else path


def sft_config(data: Data) -> SectionConfig:
    """The builder config of the SFT corpus `data` describes (name = the settings' digest); its section
    has the paths made absolute and no hub dataset when there are files, as the builder reads them."""
    if not data.files and not data.hub_dataset:
        raise DataError("data.name=sft_jsonl needs data.files (a glob of JSONL files) or data.hub_dataset")
    if not data.tokenizer_path:
        raise DataError("data.name=sft_jsonl needs data.tokenizer_path, a Hugging Face tokenizer directory "
                        "or hub id")
    data = data.replace(files=_absolute(data.files), hub_dataset="" if data.files else data.hub_dataset,
                        tokenizer_path=_tokenizer_location(data.tokenizer_path))
    settings = {k: getattr(data, k) for k in ("files", "hub_dataset", "tokenizer_path", "prompt_field",
                                              "response_field", "messages_field", "length",
                                              "validation_fraction")}
    settings["mask_id"] = data.vocab_size
    return tfds_build.section_config(data, f"l{data.length}_{tfds_build.settings_digest(settings)}",
                                     "SFT pairs.")


@dataclasses.dataclass(frozen=True)
class PreparedSFT:
    """A prepared SFT corpus: its splits as random-access sources, where it lives, and its tokenizer."""

    sources: dict[str, RandomAccessSource]
    version_dir: str
    tokenizer: ChatTokenizer


def _check_tokenizer_unchanged(cfg: Data, version_dir: str) -> None:
    """A local tokenizer directory still here must hold the files the corpus was tokenised with."""
    source, copy = cfg.tokenizer_path, os.path.join(version_dir, TOKENIZER_DIR)
    if not os.path.isdir(source):
        return
    for name in TOKENIZER_FILES:
        a, b = os.path.join(source, name), os.path.join(copy, name)
        if os.path.isfile(a) != os.path.isfile(b) or (os.path.isfile(a) and not filecmp.cmp(a, b, False)):
            raise DataError(f"the tokenizer in {source} changed since {version_dir} was prepared ({name}); "
                            "delete that directory to prepare it again")


def _check_sources(sources: dict[str, RandomAccessSource], cfg: Data) -> None:
    for split, source in sources.items():
        if len(source) == 0:
            raise DataError(f"split {split} is empty")
        record = source[0]
        tokens, prompt_length = np.asarray(record["tokens"]), np.asarray(record["prompt_length"])
        if tokens.shape != (cfg.length,) or tokens.dtype != np.int32 or prompt_length.shape != ():
            raise DataError(f"split {split} holds tokens {tokens.dtype}{list(tokens.shape)}, expected "
                            f"int32[{cfg.length}] with a prompt length")


def prepare_sft(data: Data) -> PreparedSFT:
    """Builds the SFT corpus `data` describes if needed (once per settings) and opens it.

    Raises:
      DataError (one line): no files match, a record without a response or with a prompt longer than L
        (naming its file and line), a tokenizer that cannot be read, data_dir not writable, prepared data
        that is damaged or whose sources changed.
    """
    cfg = sft_config(data)
    files = cfg.data.files

    def check_prepared(version_dir: str) -> None:
        paths = sorted(glob.glob(os.path.expanduser(files), recursive=True)) if files else []
        tfds_build.check_files_unchanged(version_dir, [p for p in paths if os.path.isfile(p)], files)
        _check_tokenizer_unchanged(cfg.data, version_dir)

    def check_inputs() -> None:
        if files:
            list_files(files)
        ChatTokenizer.load(cfg.data.tokenizer_path)  # Fails before anything is written.

    tokenizer: ChatTokenizer | None = None  # The copy saved with the data.

    def check_sources(sources: dict[str, RandomAccessSource], version_dir: str) -> None:
        nonlocal tokenizer
        tokenizer = ChatTokenizer.load(os.path.join(version_dir, TOKENIZER_DIR))
        _check_sources(sources, cfg.data)

    def announce(version_dir: str) -> None:
        print(f"preparing sft_jsonl/{cfg.name} in {version_dir}", flush=True)

    prepared = tfds_build.prepare(SFTJsonl, cfg, check_prepared=check_prepared, check_inputs=check_inputs,
                                  check_sources=check_sources, announce=announce)
    return PreparedSFT(sources=prepared.sources, version_dir=prepared.version_dir, tokenizer=tokenizer)
