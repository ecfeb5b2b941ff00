"""Small file and JSON conventions every writer shares: atomic writes, one policy for non-finite numbers,
and the names of the NFE counts a sampler returns.

Atomic: the text goes to a temporary file in the destination's directory (same file system, so the rename
is atomic), is flushed and fsynced, then `os.replace`d over the destination; a reader sees the old file or
the new one, never a partial one, and a failed write leaves no temporary file behind.

Failed writes: an OSError while writing an output (a full disk, a spent quota, a read-only or failing
device) is raised as a `WriteError` naming the path, and `write_failure` finds the failed write inside any
exception, also where a library (orbax, tensorstore, tfds) reports it as its own exception with the OS
error only in the text, so that binaries can report it in one line instead of a traceback.

Non-finite numbers: JSON has no inf or NaN (Python's `json` would write the non-standard `Infinity` and
`NaN` tokens, which strict parsers reject). They are written as `null`, which every JSON reader accepts
and no one mistakes for a number; a string such as "inf" would read as text where a number is expected.
A reader of our files therefore takes null where a figure was not finite (or not computed).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import secrets
from typing import Any

# The NFE counts of a sampler's output and of each sample record: total = predictor + corrector.
NFE_KEYS = ("nfe", "predictor_nfe", "corrector_nfe")

# The file system is full: no space left, or the user's quota spent.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
# OS errors that only a write raises: wherever they come from, an output could not be written.
WRITE_ERRNOS = (*OUT_OF_SPACE, errno.EFBIG, errno.EROFS)
# How libraries that wrap the OS error in their own exception spell it: tensorstore (orbax's array writes)
# "[os_error_code='28']", array_record (tfds) the strerror alone; the path they were writing, quoted or not.
_CODE_IN_TEXT = re.compile(r"os_error_code='?(\d+)")
_PATH_IN_TEXT = re.compile(r'"(/[^"]+)"|(?:writing|file) (/[^\s;:,"]+)')


class WriteError(OSError):
    """An OSError raised while writing an output (its `filename`): whatever its errno, it is reported as a
    failed write, not as a bug."""


@dataclasses.dataclass(frozen=True)
class WriteFailure:
    """A failed write found in an exception: the path (None when the error does not say) and why."""

    path: str | None
    reason: str
    out_of_space: bool


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or while handling, nearest first."""
    seen, todo, out = set(), [error], []
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return out


def _from_text(text: str) -> WriteFailure | None:
    codes = [int(c) for c in _CODE_IN_TEXT.findall(text)]
    names = [os.strerror(code) for code in OUT_OF_SPACE if os.strerror(code) in text]
    code = next((c for c in codes if c in WRITE_ERRNOS), None)
    if code is None and not names:
        return None
    paths = [quoted or bare for quoted, bare in _PATH_IN_TEXT.findall(text)]
    reason = os.strerror(code) if code is not None else names[0]
    return WriteFailure(paths[-1] if paths else None, reason, code in OUT_OF_SPACE or bool(names))


def write_failure(error: BaseException) -> WriteFailure | None:
    """The failed write that `error` stems from (a `WriteError`, an OSError with a `WRITE_ERRNOS` errno, or
    a library's exception whose text carries one), or None when it is something else."""
    chain = _chain(error)
    for e in chain:
        if isinstance(e, WriteError) or (isinstance(e, OSError) and e.errno in WRITE_ERRNOS):
            reason = e.strerror or str(e)
            return WriteFailure(e.filename and os.fspath(e.filename), reason, e.errno in OUT_OF_SPACE)
    for e in chain:
        found = _from_text(str(e))
        if found is not None:
            return found
    return None


def write_error(error: OSError, path: str) -> WriteError:
    """`error`, raised while writing `path`, as a WriteError naming `path`."""
    return WriteError(error.errno, error.strerror or str(error), path)


def jsonable(value: Any) -> Any:
    """`value` with non-finite floats as None and numpy scalars as Python numbers, recursively through
    dicts, lists and tuples; anything else as is."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar or 0-d array
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def dumps(obj: Any, indent: int | None = None) -> str:
    """`obj` as strict JSON under the policy above (non-finite numbers as null)."""
    return json.dumps(jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def json_line(obj: Any) -> str:
    """`obj` as one JSON Lines record with its newline; ASCII (escapes for everything else), so that no
    character of a text field can be read as a line break by a reader splitting on Unicode ones."""
    return json.dumps(jsonable(obj), allow_nan=False) + "\n"


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically, creating its directory; WriteError on failure."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A unique name opened with open(), not mkstemp: the file gets the umask's permissions (mkstemp's
    # are 0600), as a plain open() of `path` would.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(e, path) from e
        raise


def append_text(path: str, text: str, *, sync: bool = False) -> None:
    """Appends `text` (UTF-8) to `path`, fsynced if `sync`; WriteError on failure, which may leave a last
    line cut short (`keep_whole_lines` cuts it off)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except OSError as e:
        raise write_error(e, path) from e


def keep_whole_lines(path: str) -> int:
    """Cuts a text file after its last newline (a line torn by a failed write goes); returns how many
    lines it keeps. Needs no free space: the file only shrinks."""
    with open(path, "rb") as f:
        data = f.read()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    return whole.count(b"\n")


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON (non-finite numbers as null) and a final newline, atomically."""
    atomic_write_text(path, dumps(obj, indent=2) + "\n")
