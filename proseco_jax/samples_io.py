"""Samples files: JSON Lines, one sample per line, appended whole lines at a time, and read back for
scoring (`read_samples`, `token_array`, `nfe_columns`).

A sampling run appends each finished batch and flushes it, so an interrupted run leaves only whole
samples (at most a torn last line, which `prepare_output` cuts off) and a rerun continues where it stopped.
Every problem with a path or a file is one `UsageError` line, found before any sampling work.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from proseco_jax import fileio
from proseco_jax.errors import UsageError
from proseco_jax.stopping import StopRequest

Record = dict[str, Any]


def check_output_path(path: str) -> None:
    """UsageError unless `path` can be created or appended to as a file."""
    if os.path.isdir(path):
        raise UsageError(f"output {path} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write output {path}: {e.strerror or e}") from None


def read_jsonl(path: str) -> list[Record]:
    """The JSON objects of a JSONL file, one per non-empty line (one-line UsageError for a bad file)."""
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a samples file")
    if not os.path.isfile(path):
        raise UsageError(f"samples file not found: {path}")
    return _parse_jsonl(_read_bytes(path), path)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def _parse_jsonl(data: bytes, path: str) -> list[Record]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text (a samples file is JSON Lines)") from None
    records = []
    for number, line in enumerate(text.split("\n"), 1):  # JSON Lines break at \n alone
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} line {number} is not JSON: {e.msg}") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


def read_samples(path: str) -> list[Record]:
    """The samples (JSON objects) of a JSONL file; an empty file is a UsageError."""
    records = read_jsonl(path)
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


def nfe_columns(records: Sequence[Record]) -> dict[str, list[Any]]:
    """The NFE counts (`fileio.NFE_KEYS`) of the records as columns (None where a record lacks one)."""
    return {key: [r.get(key) for r in records] for key in fileio.NFE_KEYS}


def held_samples(path: str) -> list[Record]:
    """The samples the whole lines of an output file hold (a torn last line of an interrupted write left
    out), read without changing anything: [] when there is no file. UsageError unless they are samples
    (objects with 'tokens')."""
    if os.path.isdir(path):
        raise UsageError(f"output {path} is a directory; give a file name")
    if not os.path.isfile(path):
        return []
    data = _read_bytes(path)
    records = _parse_jsonl(data[: data.rfind(b"\n") + 1], path)
    for number, record in enumerate(records, 1):
        if "tokens" not in record:
            raise UsageError(f"output {path} line {number} is not a sample; use --noresume to overwrite it")
    return records


def prepare_output(path: str, *, resume: bool) -> int:
    """Makes `path` ready to append to; returns how many whole samples it already holds.

    resume=False empties the file. resume=True keeps its whole lines (a torn last line of an interrupted
    write is cut off) and checks that they are samples (objects with 'tokens').
    """
    check_output_path(path)
    if not resume:
        open(path, "w").close()
        return 0
    records = held_samples(path)
    whole = _read_bytes(path).rfind(b"\n") + 1
    if os.path.getsize(path) != whole:
        with open(path, "r+b") as f:
            f.truncate(whole)
    return len(records)


def append(path: str, records: Iterable[Record]) -> None:
    """Appends records as whole lines and flushes them to disk."""
    fileio.append_text(path, "".join(fileio.json_line(r) for r in records), sync=True)


def read_prompts(path: str) -> list[Record]:
    """The prompts of a prompt file: a JSONL file (a `.jsonl` name, or a first line that is a JSON object)
    of objects with `prompt` (text) or `messages` (chat messages [{role, content}, ...]) and any other
    fields (kept with the samples, e.g. `task_id`), else one text prompt per non-empty line. Each record
    has `prompt` or `messages`; one-line UsageError for a missing, empty or malformed file."""
    if not os.path.isfile(path):
        raise UsageError(f"prompt file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"cannot read prompt file {path}: {e.strerror or e}") from None
    first = next((line for line in lines if line.strip()), "")
    if path.endswith(".jsonl") or first.lstrip().startswith("{"):
        records = read_jsonl(path)
        for number, record in enumerate(records, 1):
            text, messages = record.get("prompt"), record.get("messages")
            if not isinstance(text, str) and not (isinstance(messages, list) and messages):
                raise UsageError(f"{path} record {number} has neither a text 'prompt' nor a list of "
                                 "'messages'")
    else:
        records = [{"prompt": line} for line in lines if line.strip()]
    if not records:
        raise UsageError(f"prompt file {path} holds no prompt")
    return records


def write_batches(batches: Iterable[list[Record]], path: str, *, done: int, total: int, step: int,
                  primary: bool = True, say: Callable[..., None] = print) -> int:
    """Appends each batch of records to `path` as it comes (process 0 alone writes), saying progress;
    Ctrl-C or SIGTERM stops after the current batch. Returns how many samples the file then holds."""
    start, first = time.time(), done
    with StopRequest("the current batch") as stop:
        for rows in batches:
            if primary:
                append(path, rows)
            done += len(rows)
            rate = (done - first) / max(time.time() - start, 1e-9)
            mean_nfe = sum(r["nfe"] for r in rows) / max(len(rows), 1)
            say(f"{done}/{total} samples | {rate:.2f} samples/s | mean NFE {mean_nfe:.1f} | ETA "
                f"{(total - done) / max(rate, 1e-9):.0f} s", flush=True)
            if stop.agreed() and done < total:
                say(f"{stop.signal_name or 'stop'}: {done} of {total} samples are in {path}; rerun the "
                    "same command to continue", flush=True)
                return done
    say(f"wrote {done} samples (checkpoint step {step}) to {path}", flush=True)
    return done
