"""Shared plumbing of the absl binaries in launch/: flag errors and `UsageError`s become one line on
stderr and exit code 2 (a `Halted` run: exit code 1), never a traceback.

A write that fails (a full disk, a spent quota, a read-only device: `fileio.write_failure`) is one line and
exit code 1 too, naming the path and what is kept: partial outputs are removed where the path says whose
they are (a workdir's unfinished checkpoint, the torn last line of a JSON Lines file), and the libraries'
own tracebacks of that failure are not logged. A binary that writes a workdir or a file calls `sole_writer`
first, so that a second process writing the same one stops at once in one line.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import logging as std_logging
import os
import sys
import threading
from collections.abc import Callable, Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags  # noqa: F401 - see run_in_process: imported before any binary.

from proseco_jax import checkpoint, config_base, fileio, host_memory, inference, locks, recorded_config
from proseco_jax.errors import Halted, UsageError

# Where binaries cache compiled XLA programs unless JAX_COMPILATION_CACHE_DIR says otherwise.
DEFAULT_COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "proseco_jax", "xla")
# What a binary holds until its main returns (the lock of `sole_writer`).
_HELD = contextlib.ExitStack()
# The workdirs this process holds the lock of: the only ones whose unfinished checkpoints it may remove.
_HELD_WORKDIRS: set[str] = set()
# The help of --keep_freed_memory, the flag of binaries that run XLA programs over and over (`run`).
_KEEP_FREED_MEMORY_HELP = (
    "When computing on the CPU: keep the memory XLA frees for the next step instead of mapping it afresh "
    "(host_memory.py; CPU train steps up to 1.4x faster; resident memory stays at its peak, which then holds "
    "the temporary buffers of two or more steps). --nokeep_freed_memory hands freed memory back.")


def fail(message: str, code: int = 2) -> None:
    """Prints `error: message` (first line only) and exits with `code` (2: bad input)."""
    print(
        f"error: {str(message).strip().splitlines()[0] if str(message).strip() else 'bad input'}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(code)


def _with_recorded_config(argv: list[str]) -> list[str]:
    """argv with `--config=<recorded_config.py>:WORKDIR` added when it overrides config fields and names a
    --workdir but no config file (for a binary whose --config has no default), so the overrides apply to the
    config the workdir's model was trained with (config_flags reads them from sys.argv, which is set to the
    result too)."""
    names = [arg.split("=", 1)[0] for arg in argv[1:]]
    workdirs = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("--workdir=")]
    overrides = any(name.startswith("--config.") for name in names)
    if "config" not in flags.FLAGS or flags.FLAGS["config"].default is not None:
        return argv
    if "--config" in names or not overrides or len(workdirs) != 1:
        return argv
    sys.argv = [argv[0], f"--config={recorded_config.__file__}:{workdirs[0]}", *argv[1:]]
    return sys.argv


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(_with_recorded_config(argv))
    except flags.Error as e:
        fail(str(e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections override errors.
        fail(f"bad config override: {e}")
    except Exception as e:  # noqa: BLE001 - config files are user code, run while flags are parsed.
        fail(f"cannot load the config: {type(e).__name__}: {e}")


def _quiet_closed_event_loop(unraisable) -> None:
    """Drops 'Event loop is closed' from array-store callbacks that finish after a failed checkpoint read
    has already been reported (and skipped) in one line; anything else goes to Python's default hook."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def _cpu_only_machine() -> bool:
    """No TPU chips (/dev/accel*, /dev/vfio) and no NVIDIA GPU (/dev/nvidia*) are attached."""
    return not any(glob.glob(pattern) for pattern in ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*"))


def sole_writer(path: str, *, workdir: bool = True) -> None:
    """Makes this process the only writer of the workdir `path` (`workdir=False`: of the file `path`) until
    the binary's main returns, or its death: a second writer gets a one-line UsageError naming this one.
    In a multi-process run only process 0 takes the lock (the others write under its direction)."""
    _HELD.enter_context(locks.sole_writer(path, primary=jax.process_index() == 0, workdir=workdir))
    if workdir:
        _HELD_WORKDIRS.add(os.path.abspath(path))
        _HELD.callback(_HELD_WORKDIRS.discard, os.path.abspath(path))


class _NoFailedWriteTracebacks(std_logging.Filter):
    """Drops log records carrying a failed write (orbax logs one per thread that saw it): the binary
    reports it once, in one line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or fileio.write_failure(error) is None


def _quiet_failed_write_in_thread(args: threading.ExceptHookArgs) -> None:
    """Drops the traceback of a library's writer thread (tensorboardX) that died of a failed write: the
    main thread meets the same failure and reports it in one line; anything else goes to the default."""
    if args.exc_value is not None and fileio.write_failure(args.exc_value) is not None:
        return
    threading.__excepthook__(args)


def _workdir_of(path: str) -> str | None:
    """The training workdir (config.json and checkpoints/) that `path` lies in, if any."""
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isfile(os.path.join(directory, "config.json")) and os.path.isdir(
                checkpoint.checkpoint_dir(directory)):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _after_failed_write(path: str | None) -> str:
    """Removes what the failed write to `path` left half done; the phrase saying what is kept."""
    if path is None:
        return "the outputs written before it"
    parts, kept = os.path.abspath(path).split(os.sep), []
    if path.endswith(".jsonl") and os.path.isfile(path):
        kept.append(f"the {fileio.keep_whole_lines(path)} whole lines of {path}")
    if any(part.startswith("incomplete.") for part in parts):  # tfds removes its partial corpus itself.
        kept.append("no partial corpus (the next run builds it again)")
    staged = any(".partial-" in part for part in parts)
    if staged:  # interop.staging removed its staging directory, checkpoints and all.
        kept.append("nothing of the new directory")
    workdir = None if staged else _workdir_of(path)
    if workdir is not None and workdir in _HELD_WORKDIRS:  # Another run's checkpoint in progress stays.
        kept.append(checkpoint.after_failed_write(workdir))
    return "; ".join(kept) or "the outputs written before it"


def _what(path: str | None) -> str:
    """`path`, prefixed with the checkpoint step it belongs to when it lies in one."""
    if path is None:
        return "an output"
    parts = os.path.abspath(path).split(os.sep)
    for parent, part in zip(parts, parts[1:]):
        step = part.split(".", 1)[0]
        if parent == "checkpoints" and step.isdigit():
            return f"checkpoint step {step} ({path})"
    return path


def _report_failed_write(failure: fileio.WriteFailure) -> None:
    """One line: where the write failed, why, what is kept; exit code 1."""
    kept = _after_failed_write(failure.path) if jax.process_index() == 0 else "what process 0 reports"
    where = _what(failure.path)
    if failure.out_of_space:
        fail(f"out of space writing {where} ({failure.reason}); kept: {kept}; free some space and rerun the "
             "same command", code=1)
    fail(f"cannot write {where} ({failure.reason}); kept: {kept}", code=1)


def _guarded(main: Callable[[list[str]], None],
             keep_freed_memory: flags.FlagHolder[bool] | None = None) -> Callable[[list[str]], None]:
    """`main` with the binaries' process settings applied and bad input turned into one line and an exit.
    `keep_freed_memory`: the flag of a binary that has its own process and opted in (`run`)."""

    def guarded(argv):
        # Before JAX starts its CPU backend's threads, which would otherwise map each step's buffers afresh.
        if keep_freed_memory is not None and keep_freed_memory.value and _computes_on_cpu():
            host_memory.keep_freed_memory()
        sys.unraisablehook = _quiet_closed_event_loop
        threading.excepthook = _quiet_failed_write_in_thread
        # With libtpu installed (the `tpu` and `test` extras) jax probes for TPU chips and prints pages of
        # warnings on a machine without them; there the CPU is the only backend anyway.
        if not os.environ.get("JAX_PLATFORMS") and _cpu_only_machine():
            jax.config.update("jax_platforms", "cpu")
        # Library chatter (orbax, tfds) would drown the progress lines; --verbosity=0 brings it back.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.ERROR)
        # XLA executables are cached on disk, so a resumed or repeated run skips recompiling its programs.
        if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            jax.config.update("jax_compilation_cache_dir", DEFAULT_COMPILATION_CACHE)
        absl_logger = logging.get_absl_logger()
        if not any(isinstance(f, _NoFailedWriteTracebacks) for f in absl_logger.filters):
            absl_logger.addFilter(_NoFailedWriteTracebacks())
        with _HELD:  # Any lock the binary takes is held while a failed write is cleaned up.
            try:
                main(argv)
            except UsageError as e:
                fail(str(e))
            except Halted as e:
                fail(str(e), code=1)
            except Exception as e:
                failure = fileio.write_failure(e)
                if failure is None:
                    raise
                _report_failed_write(failure)

    return guarded


def _computes_on_cpu() -> bool:
    """JAX will compute on the CPU: JAX_PLATFORMS names it first or, unset, no accelerator is attached."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return platforms.split(",")[0].strip() == "cpu" if platforms else _cpu_only_machine()


def run(main: Callable[[list[str]], None], *, keep_freed_memory: bool = False) -> None:
    """`app.run(main)`, with bad input reported as one line and exit code 2.

    keep_freed_memory: the binary runs XLA programs over and over (train steps, sampling, scoring), so on the
    CPU it keeps the memory they free for reuse (`host_memory.keep_freed_memory`), unless
    --nokeep_freed_memory. Binaries that stream large short-lived buffers once (conversion, data
    preparation) leave it off: for them a heap that never shrinks would only hold memory.
    """
    keep = None
    if keep_freed_memory:
        keep = flags.DEFINE_bool("keep_freed_memory", True, _KEEP_FREED_MEMORY_HELP)
    app.run(_guarded(main, keep), flags_parser=_parse_flags)


def run_in_process(script: str, argv: Sequence[str]) -> tuple[int, str]:
    """Runs the binary at path `script` as `python script *argv` would, inside this process; returns its exit
    code and what it wrote to stderr. For checking bad input without starting a process and importing jax
    again: the binary is loaded into a fresh module, and the flags it defines (absl keeps them in one
    process-wide registry, where two binaries' --config would collide) are removed again afterwards; flags
    that a library defined when the binary first imported it stay, as the library stays imported (which is
    why config_flags, defining the `--config.FIELD` flags while arguments are parsed, is imported above)."""
    defined_before, imported_before = set(flags.FLAGS), set(sys.modules)
    verbosity, unraisablehook, sys_argv = logging.get_verbosity(), sys.unraisablehook, sys.argv
    thread_excepthook = threading.excepthook
    sys.argv = [script, *argv]  # The config flag reads its `--config.FIELD` overrides from sys.argv.
    name = os.path.splitext(os.path.basename(script))[0]
    spec = importlib.util.spec_from_file_location(f"_in_process_{name}", script)
    module = importlib.util.module_from_spec(spec)
    stderr = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stderr(stderr):
            spec.loader.exec_module(module)
            _guarded(module.main)(_parse_flags(sys.argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        for flag in set(flags.FLAGS) - defined_before:
            if flags.FLAGS.find_module_defining_flag(flag) not in set(sys.modules) - imported_before:
                delattr(flags.FLAGS, flag)
        flags.FLAGS.unparse_flags()
        logging.set_verbosity(verbosity)
        sys.unraisablehook, sys.argv, threading.excepthook = unraisablehook, sys_argv, thread_excepthook
    return code, stderr.getvalue()


class DistributedFlags:
    """--multihost and the explicit coordinator settings of `jax.distributed.initialize`, for the binaries
    that run as one process per host (train.py, sample.py)."""

    def __init__(self):
        self.multihost = flags.DEFINE_bool(
            "multihost", False, "Run as one of several processes: jax.distributed.initialize() (TPU pods and "
            "SLURM are detected; elsewhere give --coordinator_address, --num_processes, --process_id).")
        self.coordinator = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
        self.num_processes = flags.DEFINE_integer("num_processes", None, "How many processes.", lower_bound=1)
        self.process_id = flags.DEFINE_integer("process_id", None, "This process's index.", lower_bound=0)

    def initialize(self) -> None:
        """Joins the other processes (a no-op without --multihost); on CPUs collectives go over gloo."""
        if not self.multihost.value:
            return
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(coordinator_address=self.coordinator.value,
                                       num_processes=self.num_processes.value,
                                       process_id=self.process_id.value)
        except (RuntimeError, ValueError) as e:
            reason = str(e).strip().splitlines()[0][:200]
            raise UsageError(f"cannot join the other processes: {reason}") from None


def config_or_fail(flag_holder):
    """Returns the parsed config of a `config_flags.DEFINE_config_file` flag, failing cleanly."""
    try:
        config = flag_holder.value
        if config is not None:
            config.keys()  # A config file that failed to load raises only when first read.
    except Exception as e:  # noqa: BLE001 - config files are user code; any failure is bad input.
        path = getattr(flags.FLAGS[flag_holder.name], "config_filename", None) or ""
        path = path.split(":")[0]
        if path and not os.path.exists(path):
            fail(f"config file {path} does not exist")
        fail(f"cannot load config {path}: {e}")
    if config is None:
        fail("--config is required (e.g. --config=configs/synthetic.py)")
    return config


def sampling_config(flag_holder, workdir: str):
    """The typed config a binary samples `workdir` with: --config (a `DEFINE_config_file` flag) when given,
    checked against the model recorded in the workdir, else the workdir's own config.json."""
    if flags.FLAGS[flag_holder.name].present:
        config = config_base.resolve(config_or_fail(flag_holder))
        inference.check_workdir_config(config, workdir)
        return config
    return inference.workdir_config(workdir)
