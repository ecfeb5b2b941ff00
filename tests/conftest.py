"""Test setup: 8 fake CPU devices, so mesh code runs here exactly as on a pod slice.

XLA reads the flag once, when jax is first imported, so it is set before anything imports jax.

Shared helpers (import them: `from conftest import run_binary, ...`): every process a test starts goes
through `start_python` / `run_python` (`run_binary` for a launch/ binary) on fake CPU devices;
`usage_error` runs a binary's flags and main in this process, for bad-input messages that need no process
of their own, and `assert_usage_error` checks the one-line exit-code-2 contract on either;
`assert_resumes_after_sigkill` kills a training run midway and checks that its rerun logs the metrics of an
uninterrupted one. `TINY_MODEL_OVERRIDES` is the one tiny DiT of the tests (`TINY_MODEL` as keyword
arguments), `TINY_OVERRIDES` adds the tiny corpus and batch, `tiny_config` builds that config in-process,
and the session fixture `tiny_trained_workdir` trains one such model once.
"""

import ast
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    # Lower backend optimisation compiles test programs about twice as fast; the tests time nothing.
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are cached on disk and shared with the binaries the tests start, so a program that
# several tests (or processes) build is compiled once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "proseco_jax_test_xla_cache")
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "synthetic.py")
VOCAB, LENGTH = 16, 32
TINY_MODEL = {"num_layers": 1, "hidden_size": 64, "num_heads": 4, "cond_dim": 32}
TINY_MODEL_OVERRIDES = [f"--config.model.{field}={value}" for field, value in TINY_MODEL.items()]
TINY_OVERRIDES = [
    *TINY_MODEL_OVERRIDES,
    f"--config.model.max_length={LENGTH}",
    f"--config.data.vocab_size={VOCAB}",
    f"--config.data.length={LENGTH}",
    "--config.data.num_train=1000",
    "--config.data.num_eval=128",
    "--config.train.batch_size=8",  # validation's eval_batches x batch must fit the 128 held-out sequences
]
# The training run of `tiny_trained_workdir`: 4 steps, one validation at the end (metrics.jsonl has
# val_bits_per_token), one checkpoint.
TINY_TRAIN = [
    "--config.train.num_steps=4",
    "--config.train.log_every=2",
    "--config.train.eval_every=4",
    "--config.train.eval_batches=1",
    "--config.train.checkpoint_every=4",
]


def python_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a test's child process: CPU only, `devices` fake devices, then `extra`."""
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, **extra}


def start_python(*args: str, devices: int = 1, env: dict | None = None, capture: bool = True
                 ) -> subprocess.Popen:
    """Starts `python *args` on `devices` fake CPU devices (`env`: extra variables); stdout and stderr are
    piped as text unless `capture` is False (a run that is killed midway: nobody reads its output)."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, *args], env=python_env(devices, **(env or {})), stdout=output,
                            stderr=output, text=True)


def run_python(*args: str, devices: int = 1, env: dict | None = None, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """Runs `python *args` to its end (see `start_python`); stdout and stderr captured as text."""
    proc = start_python(*args, devices=devices, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def binary(script: str) -> str:
    return os.path.join(REPO, "launch", script)


def run_binary(script: str, *args: str, devices: int = 1, env: dict | None = None, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """Runs launch/<script> with `args` on `devices` fake CPU devices; stdout and stderr captured as text."""
    return run_python(binary(script), *args, devices=devices, env=env, timeout=timeout)


def usage_error(script: str, *args: str) -> subprocess.CompletedProcess:
    """launch/<script> with `args` run in this process up to its exit (flags parsed, main run), for
    `assert_usage_error`: only a binary that rejects its input before any work belongs here."""
    from proseco_jax import cli  # Imported here: nothing may import jax before XLA_FLAGS above is set.

    code, stderr = cli.run_in_process(binary(script), args)
    return subprocess.CompletedProcess([script, *args], code, "", stderr)


def assert_usage_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Bad input: exit code 2 and exactly one non-empty stderr line, `error: ...` holding `message`."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error:") and message in lines[0], lines[0]


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_resumes_after_sigkill(train_args: list[str], workdir: str, uninterrupted: str, kill_after: int
                                 ) -> None:
    """Starts launch/train.py with `train_args` (writing `workdir`), SIGKILLs it once metrics.jsonl holds
    step `kill_after`, reruns it, and checks that the rerun resumed and that `workdir` then holds the
    metrics of the `uninterrupted` run of the same arguments (every figure but the throughput)."""
    expected = read_metrics(uninterrupted)
    proc = start_python(binary("train.py"), *train_args, capture=False)
    path, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and any(r["step"] >= kill_after for r in read_metrics(workdir)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(r["step"] for r in read_metrics(workdir)) < expected[-1]["step"]

    rerun = run_binary("train.py", *train_args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from the checkpoint at step" in rerun.stdout
    got = read_metrics(workdir)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for want, have in zip(expected, got):
        for key in want:
            if key != "tokens_per_sec":
                assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (want["step"], key)


def _value(text: str):
    """A flag value as ml_collections would parse it: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override_values(*overrides: str) -> dict:
    """`--config.SECTION.FIELD=VALUE` flags as {"SECTION.FIELD": value} (the notebook's OVERRIDES)."""
    pairs = (flag.removeprefix("--config.").split("=", 1) for flag in overrides)
    return {path: _value(value) for path, value in pairs}


def tiny_config(*overrides: str):
    """The ConfigDict of configs/synthetic.py with TINY_OVERRIDES and then `overrides` applied."""
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for path, value in override_values(*TINY_OVERRIDES, *overrides).items():
        section, name = path.split(".")
        config[section][name] = value
    return config


@pytest.fixture(scope="session")
def tiny_trained_workdir(tmp_path_factory):
    """One tiny model trained once per session by launch/train.py: (workdir, data_dir, config_overrides).

    config_overrides: every `--config.` flag of that run (TINY_OVERRIDES, data_dir, TINY_TRAIN); pass them
    to a binary, or to `tiny_config`, to get the config of the trained model.
    """
    root = tmp_path_factory.mktemp("tiny_trained")
    workdir, data_dir = str(root / "work"), str(root / "data")
    overrides = [*TINY_OVERRIDES, f"--config.data.data_dir={data_dir}", *TINY_TRAIN]
    proc = run_binary("train.py", f"--config={CONFIG}", f"--workdir={workdir}", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, data_dir, overrides
