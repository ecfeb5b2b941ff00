"""Small file and JSON conventions every writer shares: atomic writes, one policy for non-finite numbers,
and the names of the NFE counts a sampler returns.

Atomic: the text goes to a temporary file in the destination's directory (same file system, so the rename
is atomic), is flushed and fsynced, then `os.replace`d over the destination; a reader sees the old file or
the new one, never a partial one, and a failed write leaves no temporary file behind.

Non-finite numbers: JSON has no inf or NaN (Python's `json` would write the non-standard `Infinity` and
`NaN` tokens, which strict parsers reject). They are written as `null`, which every JSON reader accepts
and no one mistakes for a number; a string such as "inf" would read as text where a number is expected.
A reader of our files therefore takes null where a figure was not finite (or not computed).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from typing import Any

# The NFE counts of a sampler's output and of each sample record: total = predictor + corrector.
NFE_KEYS = ("nfe", "predictor_nfe", "corrector_nfe")


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
    """Writes `text` (UTF-8) to `path` atomically, creating its directory; OSError on failure."""
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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON (non-finite numbers as null) and a final newline, atomically."""
    atomic_write_text(path, dumps(obj, indent=2) + "\n")
