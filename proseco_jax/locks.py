"""One writer at a time: an exclusive `flock` on a lock file, held while a process writes a workdir, a
samples file or a corpus.

The kernel releases a flock when its holder dies, so a killed run never leaves a stale lock: the next run
finds the file but takes the lock at once. The holder writes its PID, host and command line into the file,
so that a second writer can say who is in the way. The lock of a workdir or an output file is removed when
its holder lets go; a waiter that then wins the lock on the removed file notices (the path no longer names
the file it locked) and starts over on the new one, so two processes never both hold "the" lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator

from proseco_jax import fileio
from proseco_jax.errors import UsageError

# A workdir's lock file (inside it), and the suffix of a file's (next to it).
WORKDIR_LOCK = ".lock"
FILE_LOCK_SUFFIX = ".lock"
# The command line recorded for the holder is cut to this many characters.
MAX_COMMAND = 200


def workdir_lock_path(workdir: str) -> str:
    return os.path.join(workdir, WORKDIR_LOCK)


def file_lock_path(path: str) -> str:
    return path + FILE_LOCK_SUFFIX


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """'PID n on HOST (command)' as its holder recorded it, or a plain phrase while it has not yet."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"PID {record['pid']} on {record['host']} ({record['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _record(fd: int) -> None:
    command = " ".join(sys.argv)
    command = command if len(command) <= MAX_COMMAND else command[: MAX_COMMAND - 3] + "..."
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (record + "\n").encode("utf-8"), 0)


def acquire(lock_path: str, *, wait: bool = False, label: str | None = None) -> int:
    """The descriptor of `lock_path`, exclusively flocked and recording this process; `wait=False`: a
    UsageError naming the holder (`<label> is in use by PID n on HOST (command)`) when another process holds
    it. OSError when the file cannot be created."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise UsageError(f"{label or lock_path} is in use by {holder}") from None
        if _same_file(fd, lock_path):
            try:
                _record(fd)
            except OSError:
                os.close(fd)
                raise
            return fd
        os.close(fd)  # The holder we waited for removed the file: lock the one now at the path.


def release(fd: int, lock_path: str) -> None:
    """Removes `lock_path` (while still holding it, so no one can take the removed file) and lets go."""
    try:
        if _same_file(fd, lock_path):
            os.remove(lock_path)
    except OSError:
        pass  # The file stays behind: harmless, as nobody holds it once `fd` is closed below.
    os.close(fd)


@contextlib.contextmanager
def sole_writer(path: str, *, primary: bool = True, workdir: bool = True) -> Iterator[None]:
    """Holds the lock of the workdir `path` (its `.lock`; `workdir=False`: of the file `path`, `path.lock`
    next to it) for the block; a second writer gets a UsageError naming the holder and has touched nothing
    but the lock file (a WriteError when the lock file cannot be written for want of space). Only the
    primary process of a multi-process run takes it (`primary`: process 0)."""
    if not primary:
        yield
        return
    lock_path = workdir_lock_path(path) if workdir else file_lock_path(path)
    directory = os.path.dirname(os.path.abspath(lock_path))
    created = not os.path.isdir(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        fd = acquire(lock_path, label=path)
    except OSError as e:
        if e.errno in fileio.WRITE_ERRNOS:  # A full disk is no bad input: reported as the failed write.
            raise fileio.write_error(e, lock_path) from e
        raise UsageError(f"{path} cannot be written: {e.strerror or e}") from None
    try:
        yield
    finally:
        release(fd, lock_path)
        if created:  # A writer that stopped before writing anything leaves no empty directory behind.
            with contextlib.suppress(OSError):
                os.rmdir(directory)
