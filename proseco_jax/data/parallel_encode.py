"""Tokenising a stream of documents in worker processes, in order, with a progress line and an ETA.

Documents are grouped into chunks (about a megabyte of text each) and handed to a pool of `num_proc`
spawned processes (spawned, not forked: the parent may already run JAX's threads); at most two chunks
per worker are in flight, so memory stays bounded however large the corpus, and the results come back in
document order. With `num_proc` <= 1, or a tokenizer that is a table lookup (bytes, chars),
the parent tokenises by itself.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent import futures

import numpy as np

from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.tokenizers import Tokenizer

_CHUNK_CHARS = 1 << 20
_CHUNK_DOCS = 4096
_IN_FLIGHT_PER_WORKER = 2
_PRINT_EVERY_S = 5.0

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # One process, one core.
    _worker_tokenizer = tokenizer


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    return _worker_tokenizer.encode_batch(texts)


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
    chunk, chars = [], 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if chars >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Prints `label: done/total documents (pct), tokens, tokens/s, ETA` to stdout every few seconds."""

    def __init__(self, label: str, total_documents: int):
        self.label, self.total = label, max(total_documents, 1)
        self.documents = self.tokens = 0
        self._start = self._printed = time.time()

    def update(self, documents: int, tokens: int) -> None:
        self.documents += documents
        self.tokens += tokens
        now = time.time()
        if now - self._printed >= _PRINT_EVERY_S:
            self._printed = now
            elapsed = now - self._start
            eta = elapsed * (self.total - self.documents) / max(self.documents, 1)
            print(f"{self.label}: {self.documents:,}/{self.total:,} documents "
                  f"({100 * self.documents / self.total:.0f}%), {self.tokens:,} tokens, "
                  f"{self.tokens / elapsed:,.0f} tokens/s, ETA {_duration(eta)}", flush=True)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(time.time() - self._start, 1e-9)

    def finish(self, sequences: int) -> None:
        took = _duration(time.time() - self._start)
        print(f"{self.label}: {self.documents:,} documents, {self.tokens:,} tokens -> {sequences:,} "
              f"sequences in {took} ({self.tokens_per_second:,.0f} tokens/s)", flush=True)


class ParallelEncoder:
    """`encode(docs)` yields each document's ids int32 [n] in order, tokenised by `num_proc` processes."""

    def __init__(self, tokenizer: Tokenizer, num_proc: int):
        self._tokenizer = tokenizer
        self._workers = max(num_proc, 1)
        self._pool = None
        if num_proc > 1 and not tokenizer.vectorised:
            # An executor, not a multiprocessing.Pool: a worker that cannot start (spawned workers re-import
            # the parent's main module) breaks it with an error instead of hanging the parent.
            spawn = multiprocessing.get_context("spawn")
            self._pool = futures.ProcessPoolExecutor(num_proc, mp_context=spawn, initializer=_init_worker,
                                                     initargs=(tokenizer,))

    def encode(self, docs: Iterable[str], progress: Progress | None = None) -> Iterator[np.ndarray]:
        pending: collections.deque = collections.deque()

        def finished(ids: list[np.ndarray]) -> list[np.ndarray]:
            if progress is not None:
                progress.update(len(ids), sum(len(a) for a in ids))
            return ids

        def result(future: futures.Future) -> list[np.ndarray]:
            try:
                return finished(future.result())
            except futures.process.BrokenProcessPool as e:
                raise DataError(f"the tokenising processes died ({one_line(e)}); set data.num_proc=1 to "
                                "tokenise in this process") from None

        for chunk in _chunks(docs):
            if self._pool is None:
                yield from finished(self._tokenizer.encode_batch(chunk))
                continue
            pending.append(self._pool.submit(_encode_chunk, chunk))
            if len(pending) >= _IN_FLIGHT_PER_WORKER * self._workers:
                yield from result(pending.popleft())
        while pending:
            yield from result(pending.popleft())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
