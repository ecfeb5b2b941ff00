"""Writing a new directory all at once: conversions (`convert.py`, `llada.py`) refuse to overwrite a
directory that holds anything, and write into a hidden directory next to the target that is renamed into
place only when complete, so bad input or a crash never leaves a half-written workdir or model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from proseco_jax import locks
from proseco_jax.errors import UsageError


def check_new_directory(path: str, label: str) -> None:
    """UsageError unless `path` is absent or an empty directory (conversion never overwrites); the lock
    file of the conversion writing it does not count."""
    empty = os.path.isdir(path) and not set(os.listdir(path)) - {locks.WORKDIR_LOCK}
    if os.path.exists(path) and not empty:
        raise UsageError(f"{label} {path} already exists and is not an empty directory; pick a new one")


@contextlib.contextmanager
def staged_directory(target: str) -> Iterator[str]:
    """A fresh hidden directory next to `target`, renamed to `target` when the block completes and removed
    when it fails."""
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.partial-", dir=parent)
    except OSError as e:
        raise UsageError(f"cannot write next to {target}: {e.strerror or e}") from None
    try:
        yield staging
        if os.path.isdir(target):
            lock = locks.workdir_lock_path(target)
            if os.path.exists(lock):  # The lock moves with the workdir, still held by the same descriptor.
                os.rename(lock, locks.workdir_lock_path(staging))
            os.rmdir(target)  # Empty (checked before any work); not every OS renames onto it.
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
