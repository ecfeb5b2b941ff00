"""Runs one Python program the way a code benchmark scores it: it passes only when its code ran to its end.

A harness (`_HARNESS`) starts in a fresh interpreter (`-I`, an environment of PATH, HOME and TMPDIR set to
the program's own empty temporary directory, and a marker), reads a one-time nonce from stdin, sets CPU,
address-space, file-size and core limits, disables sockets, executes the program as `__main__`, and only
when that returns writes the nonce to a pipe of its own. The program passes exactly when the nonce comes
back: exiting early in any way (`os._exit(0)`, `sys.exit(0)`, `raise SystemExit`, a signal) fails,
whatever the exit status. Every process that carries the run's marker in its environment (the program's
children and grandchildren, also those that left its session with `os.setsid()`) is stopped and killed
when the program exits or its wall-clock timeout passes. stdout and stderr are read as they come and only
their first `OUTPUT_LIMIT` bytes kept, so a program's output never grows the evaluator's memory. When the
evaluator runs as root, programs run as the unprivileged user `nobody`, so they can neither touch the
evaluator's files nor signal it.

Not guaranteed: a descendant that replaces its environment (exec with a new one) escapes the kill; there is
no network isolation beyond the patched `socket` module (a program can restore it); programs of one
evaluator share the sandbox user and can disturb each other; without root they run as the evaluator's own
user. It is a guard against mistakes and against models that game the exit status, not a security
boundary: run completions of untrusted models inside a container or VM. Linux only (/proc, pidfds).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pwd
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from proseco_jax.errors import UsageError

# Bytes of a program's stdout and of its stderr that are kept; the rest is read and dropped.
OUTPUT_LIMIT = 64 << 10
# Names every process of one run in its environment: MARKER=<random token>.
MARKER = "PROSECO_SANDBOX_RUN"

# The child interpreter's main: nonce first (stdin then closed), limits, no sockets, the program as
# __main__, then the nonce on the result pipe. Functions it needs afterwards are bound before the program
# runs, so a program that replaces os.write or os._exit only makes itself fail; the nonce and the pipe live
# in a function's locals, not in a module the program can import (a program that walks the interpreter's
# frames could still find them: see the README on what the sandbox does not guarantee).
_HARNESS = r"""
import os, resource, socket, sys
def _run():
    seconds, megabytes, path, result_fd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    nonce = os.read(0, 64)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for limit, value in ((resource.RLIMIT_CPU, seconds), (resource.RLIMIT_AS, megabytes << 20),
                         (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    def _offline(*args, **kwargs):
        raise OSError("network access is disabled while evaluating")
    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            _offline()
    socket.socket = _NoSocket
    socket.create_connection = socket.getaddrinfo = socket.socketpair = socket.fromfd = _offline
    sys.argv = [path]
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    write, exit_now, streams = os.write, os._exit, (sys.stdout, sys.stderr)
    exec(code, {"__name__": "__main__"})
    write(result_fd, nonce)
    for stream in streams:
        try:
            stream.flush()
        except Exception:
            pass
    exit_now(0)
_run()
"""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How one program ended: "passed", "failed" or "timed out"; detail: stderr's last line or the exit;
    stdout / stderr: the first OUTPUT_LIMIT bytes of each."""

    status: str
    detail: str = ""
    stdout: str = ""
    stderr: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) programs run as: `nobody`'s when this process is root, else None (this process's)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def _user_args(user: tuple[int, int] | None) -> dict:
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


@functools.cache
def sandbox_interpreter() -> str:
    """The Python that runs programs: this process's, or, when the sandbox user cannot run it (an
    interpreter under root's private home), the system's python3. UsageError when the user can run none."""
    user = sandbox_user()
    if user is None:
        return sys.executable
    for path in (sys.executable, shutil.which("python3", path=os.defpath)):
        if path:
            try:
                probe = subprocess.run([path, "-I", "-c", "import json"], cwd="/", stdin=subprocess.DEVNULL,
                                       capture_output=True, timeout=60, env={"PATH": os.defpath},
                                       **_user_args(user))
            except (OSError, subprocess.TimeoutExpired):
                continue
            if probe.returncode == 0:
                return path
    raise UsageError(f"programs run as uid {user[0]} when evaluating as root, and that user can run neither "
                     f"{sys.executable} nor a python3 in {os.defpath}: install one it can read")


def run_program(source: str, *, timeout: float = 10.0, memory_mb: int = 2048) -> RunResult:
    """Runs `source` in the sandbox (see the module docstring) and says how it ended."""
    user = sandbox_user()
    interpreter = sandbox_interpreter()
    directory = tempfile.mkdtemp(prefix="proseco_eval_")
    token = secrets.token_hex(16)
    nonce = secrets.token_hex(16).encode()
    proc = None
    try:
        path = os.path.join(directory, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        if user is not None:
            os.chown(directory, *user)
        result_read, result_write = os.pipe()
        with os.fdopen(result_read, "rb", buffering=0) as result:
            try:
                proc = subprocess.Popen(
                    [interpreter, "-I", "-c", _HARNESS, str(math.ceil(timeout) + 1), str(memory_mb), path,
                     str(result_write)],
                    cwd=directory, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(result_write,), start_new_session=True,
                    env={"PATH": os.defpath, "HOME": directory, "TMPDIR": directory, MARKER: token},
                    **_user_args(user))
            finally:
                os.close(result_write)
            try:
                proc.stdin.write(nonce)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            heads, timed_out = _read_until_exit(proc, (proc.stdout, proc.stderr, result), timeout)
    finally:
        kill_marked(f"{MARKER}={token}".encode())
        if proc is not None:
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)
    return _outcome(heads, nonce, timed_out, proc.returncode, timeout)


def _outcome(heads: list[bytes], nonce: bytes, timed_out: bool, returncode: int, timeout: float
             ) -> RunResult:
    """How a run ended, from what it wrote (stdout, stderr, the result pipe) and its exit."""
    stdout, stderr = (h.decode("utf-8", "replace") for h in heads[:2])
    if heads[2] == nonce:
        return RunResult("passed", "", stdout, stderr)
    if timed_out:
        return RunResult("timed out", f"no exit within {timeout:g} s", stdout, stderr)
    lines = stderr.strip().splitlines()
    if lines:
        detail = lines[-1][:300]
    elif returncode < 0:
        detail = f"killed by signal {-returncode} before the tests finished"
    else:
        detail = f"exited with status {returncode} before the tests finished"
    return RunResult("failed", detail, stdout, stderr)


def _read_until_exit(proc: subprocess.Popen, streams, timeout: float) -> tuple[list[bytes], bool]:
    """The first OUTPUT_LIMIT bytes of each stream, read until all close or `proc` exits (a descendant
    may hold them open), and whether the timeout passed first."""
    heads = [bytearray() for _ in streams]
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for index, stream in enumerate(streams):
            selector.register(stream, selectors.EVENT_READ, index)

        def read(wait: float) -> None:
            for key, _ in selector.select(wait):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif len(heads[key.data]) < OUTPUT_LIMIT:
                    heads[key.data] += chunk[: OUTPUT_LIMIT - len(heads[key.data])]

        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return [bytes(h) for h in heads], True
            read(min(left, 0.05))
            if proc.poll() is not None:
                read(0)  # What it wrote just before exiting.
                break
    return [bytes(h) for h in heads], False


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:  # Gone, or a process this user may not read (then not one of ours).
        return False


def marked_processes(marker: bytes) -> list[int]:
    """The PIDs whose environment holds the entry `marker` (b"NAME=value")."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and _has_marker(int(name), marker)]


def kill_marked(marker: bytes) -> None:
    """SIGKILLs every process whose environment holds `marker`: each is stopped first, and the scan repeats
    until it finds no new one, so a process forking meanwhile cannot outrun it; returns once they have all
    exited. Signals go through pidfds after the marker is read again, so a PID reused by another process is
    never signalled."""
    stopped, seen = [], set()
    try:
        while found := [pid for pid in marked_processes(marker) if pid not in seen]:
            for pid in found:
                seen.add(pid)
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    continue
                if _has_marker(pid, marker) and _signal(pidfd, signal.SIGSTOP):
                    stopped.append(pidfd)
                else:
                    os.close(pidfd)
        for pidfd in stopped:
            _signal(pidfd, signal.SIGKILL)
        # A pidfd turns readable when its process has exited: return only once they all have.
        with selectors.DefaultSelector() as selector:
            for pidfd in stopped:
                selector.register(pidfd, selectors.EVENT_READ)
            deadline = time.monotonic() + 10
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(deadline - time.monotonic()):
                    selector.unregister(key.fileobj)
    finally:
        for pidfd in stopped:
            os.close(pidfd)


def _signal(pidfd: int, sig: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True
