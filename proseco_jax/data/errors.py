"""The error type of the data layer, `DataError`, and `one_line`, which keeps its messages to one line."""

from __future__ import annotations

from proseco_jax.errors import UsageError


class DataError(UsageError, ValueError):
    """Data is missing, corrupt or cannot be written; the message is one line saying which and where.

    A `UsageError`, so binaries report it as one line and exit with code 2.
    """


def one_line(e: BaseException) -> str:
    """`Type: message` of an exception on one line (tfds, array_record and numpy errors span several)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"
