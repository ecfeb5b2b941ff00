"""Test setup: 8 fake CPU devices, so mesh code runs here exactly as on a pod slice.

XLA reads the flag once, when jax is first imported, so it is set before anything imports jax.

Shared helpers (import them: `from conftest import run_binary, ...`): `run_binary` starts a launch/
binary on fake CPU devices, `assert_usage_error` checks the one-line exit-code-2 contract of bad input,
`TINY_OVERRIDES` are the `--config.` flags of the tiny model, corpus and batch the tests use, `tiny_config`
builds that config in-process, and the session fixture `tiny_trained_workdir` trains one such model once.
"""

import ast
import importlib.util
import os
import subprocess
import sys
import tempfile

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
TINY_OVERRIDES = [
    "--config.model.num_layers=1",
    "--config.model.hidden_size=64",
    "--config.model.num_heads=4",
    "--config.model.cond_dim=32",
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


def run_binary(script: str, *args: str, devices: int = 1, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """Runs launch/<script> with `args` on `devices` fake CPU devices; stdout and stderr captured as text."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0")
    cmd = [sys.executable, os.path.join(REPO, "launch", script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_usage_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Bad input: exit code 2 and exactly one non-empty stderr line, `error: ...` holding `message`."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error:") and message in lines[0], lines[0]


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
