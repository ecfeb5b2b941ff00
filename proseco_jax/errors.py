"""The error types that binaries report in one line instead of a traceback.

A `UsageError` is input the user must fix (config, flags, data, workdir, checkpoint): one line on stderr
and exit code 2. A `Halted` run stopped itself for a reason it states (training diverged): one line and
exit code 1. Anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """Input that the user must fix; its message is one self-contained line."""


class Halted(Exception):
    """A run that stopped itself, keeping every good checkpoint; its message is one line saying why."""
