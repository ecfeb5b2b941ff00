"""grain input pipelines: an endless, shuffled, process-sharded, checkpointable training stream and a
fixed sequence of evaluation batches.

Both read any random-access source (`__len__`, `__getitem__` returning `{'tokens': int32 [L]}`, and
optionally the batched `__getitems__` of tfds sources, which is several times faster than item by item).
Training order is defined globally: the example indices 0..N-1 are shuffled with `seed` (a new
permutation every epoch), concatenated over epochs, and cut into global batches of `global_batch_size`;
process p of P receives rows [p * B / P, (p + 1) * B / P) of every global batch. So the processes' rows
are disjoint, their union is exactly the single-process batch, the stream does not depend on the
number of processes, and epochs flow into each other without dropping examples. The iterator's state
(`get_state`/`set_state`, or orbax via `data_iterator_checkpoint_args`) is one integer per process.
Fine-tuning pairs (`{'tokens', 'prompt_length'}`) come with `'mask'` [B, L], 1 on the response positions
(position >= prompt_length): the per-token mask the train step takes, here marking what SFT masks and scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import orbax.checkpoint as ocp

from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.tfds_build import RandomAccessSource

# Threads that read ahead in the main process, and how many batches they may hold. Reading is a few
# milliseconds per batch, so a small pool hides it behind a training step without hoarding memory.
_READ_THREADS = 4
_PREFETCH_BATCHES = 16


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Rows each process reads per step; the global batch must split evenly over processes."""
    if global_batch_size < 1 or process_count < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the process count "
            f"{process_count}"
        )
    return global_batch_size // process_count


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")


def _describe(source: RandomAccessSource) -> str:
    """Where a source reads from (its tfds version directory and split when it has them)."""
    info = getattr(source, "dataset_info", None)
    where = getattr(info, "data_dir", None)
    split = getattr(source, "split", None)
    return f"the {split} split in {where}" if where else type(source).__name__


def response_mask(prompt_length: np.ndarray, length: int) -> np.ndarray:
    """uint8 [B, L]: 1 at the positions >= prompt_length [B] (the response and its EOS padding)."""
    return (np.arange(length)[None, :] >= np.asarray(prompt_length)[:, None]).astype(np.uint8)


def _read(source: RandomAccessSource, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Reads examples `indices` and stacks each feature: {name: [len(indices), ...]}."""
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    try:
        records: Sequence[Mapping[str, Any]] = (
            getitems(indices) if getitems is not None else [source[i] for i in indices]
        )
    except (RuntimeError, OSError, ValueError) as e:  # array_record reports a damaged chunk as RuntimeError.
        raise DataError(f"cannot read records of {_describe(source)}: {one_line(e)}; the data is damaged: "
                        "delete that directory and rerun to rebuild it") from None
    batch = {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}
    if "tokens" in batch:
        batch["tokens"] = batch["tokens"].astype(np.int32, copy=False)
    if "prompt_length" in batch:
        batch["mask"] = response_mask(batch["prompt_length"], batch["tokens"].shape[1])
    return batch


class _ReadLocalRows:
    """Maps a global batch of example indices [B] to this process's examples [B / P, ...].

    A class rather than a closure so that grain can pickle it into worker processes.
    """

    def __init__(self, source: RandomAccessSource, start: int, stop: int):
        self._source = source
        self._start = start
        self._stop = stop

    def __call__(self, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        return _read(self._source, global_indices[self._start : self._stop])


def train_iterator(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """Endless training batches `{'tokens': int32 [global_batch_size // process_count, L]}` for one process.

    Args:
      source: the training split.
      global_batch_size: rows per step over all processes.
      seed: shuffle seed in [0, 2**32); the same on every process (they share one global order).
      process_index, process_count: this process and how many read (jax.process_index/count()).
      worker_count: grain worker processes (0 reads in this process with a few prefetch threads; > 0
        needs absl flags to have been parsed, as in the binaries).

    Returns:
      A grain iterator; `get_state()`/`set_state()` resume it exactly where it was.
    """
    local = local_batch_size(global_batch_size, process_count)
    _check_process(process_index, process_count)
    if not 0 <= seed < 2**32:
        raise ValueError(f"data shuffle seed must be in [0, 2**32), got {seed}")
    if len(source) == 0:
        raise DataError("training source is empty")
    start = process_index * local
    dataset = (
        grain.MapDataset.range(len(source))
        .shuffle(seed=seed)
        # Repeating before batching lets batches run across epoch boundaries (no example is dropped)
        # while each epoch is reshuffled with a seed derived from `seed` and the epoch.
        .repeat()
        # Every process draws the same global batch of indices and reads only its own rows.
        .batch(global_batch_size, drop_remainder=True)
        .map(_ReadLocalRows(source, start, start + local))
    )
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES)
    )
    if worker_count > 0:
        iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(iter_dataset)


def eval_batches(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    num_batches: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The first `num_batches` global batches of `source`, in order: the same on every call.

    Yields `{'tokens': int32 [global_batch_size // process_count, L]}`; process p gets rows
    [p * B / P, (p + 1) * B / P) of each global batch, as in `train_iterator`.

    Raises:
      DataError: the source holds fewer than num_batches * global_batch_size examples (reusing examples
        would silently weight some of them twice).
    """
    local = local_batch_size(global_batch_size, process_count)
    _check_process(process_index, process_count)
    needed = num_batches * global_batch_size
    if num_batches < 1 or needed > len(source):
        raise DataError(
            f"evaluation needs {num_batches} batches of {global_batch_size} = {needed} examples, "
            f"but the split has {len(source)}"
        )

    def generate() -> Iterator[dict[str, np.ndarray]]:
        for b in range(num_batches):
            first = b * global_batch_size + process_index * local
            yield _read(source, range(first, first + local))

    # Checks above run at call time; the generator only reads.
    return generate()


def data_iterator_checkpoint_args(it: grain.DatasetIterator, save: bool) -> ocp.args.CheckpointArgs:
    """orbax args that save (`save=True`) or restore into (`save=False`) the iterator `it`.

    Use under one item name of an `ocp.CheckpointManager`, e.g.
    `ocp.args.Composite(data_iter=data_iterator_checkpoint_args(it, save=True), ...)`. The state is read
    when the manager's `save` is called, so the iterator may advance while the checkpoint is finalised.
    Each process writes its own `process_<i>-of-<n>.json`, named by jax.process_index()/process_count().
    """
    return grain.checkpoint.CheckpointSave(it) if save else grain.checkpoint.CheckpointRestore(it)
