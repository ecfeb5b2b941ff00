"""The error type for bad user input (config, flags, data, workdir).

Binaries turn a `UsageError` into one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""


class UsageError(Exception):
    """Input that the user must fix; its message is one self-contained line."""
