"""End-to-end checks of `launch/train.py`: the metrics contract, falling loss, resume after SIGKILL, and
bad input reported as one line with exit code 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_usage_error, tiny_config

from proseco_jax import train
from proseco_jax.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "launch", "train.py")
CONFIG = os.path.join(REPO, "configs", "synthetic.py")


def tiny_flags(workdir, data_dir, **overrides):
    values = {
        "model.num_layers": 1,
        "model.hidden_size": 64,
        "model.num_heads": 4,
        "model.cond_dim": 32,
        "model.max_length": 32,
        "data.vocab_size": 16,
        "data.length": 32,
        "data.num_train": 2000,
        "data.num_eval": 256,
        "data.data_dir": data_dir,
        "train.batch_size": 16,
        "train.num_steps": 40,
        "train.log_every": 5,
        "train.eval_every": 20,
        "train.eval_batches": 2,
        "train.checkpoint_every": 10,
        "train.warmup_steps": 5,
        "train.learning_rate": 3e-3,
    }
    values.update(overrides)
    return [sys.executable, TRAIN, f"--config={CONFIG}", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def env(devices=1):
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    e["JAX_PLATFORMS"] = "cpu"
    return e


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("markov_data"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    proc = subprocess.run(
        tiny_flags(workdir, data_dir), env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_train_writes_metrics_contract_and_checkpoints(finished_run):
    workdir, proc = finished_run
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    for r in rows:
        for key in ("step", "loss", "mdm_loss", "corrector_loss", "tokens_per_sec"):
            assert key in r
    assert "val_bits_per_token" in rows[3] and "val_bits_per_token" in rows[-1]
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())[-1] == 40
    assert "step 40/40" in proc.stdout and "ETA" in proc.stdout
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_train_loss_falls(finished_run):
    rows = read_metrics(finished_run[0])
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert rows[-1]["mdm_loss"] < rows[0]["mdm_loss"]


def test_rerun_of_a_finished_run_resumes_and_does_nothing(finished_run, data_dir):
    workdir, _ = finished_run
    before = read_metrics(workdir)
    proc = subprocess.run(
        tiny_flags(workdir, data_dir), env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from the checkpoint at step 40" in proc.stdout
    assert read_metrics(workdir) == before


def test_sigkill_then_rerun_logs_the_same_metrics_as_an_uninterrupted_run(finished_run, data_dir, tmp_path):
    workdir = str(tmp_path / "killed")
    cmd = tiny_flags(workdir, data_dir)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 500
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics_path) and any(r["step"] >= 25 for r in read_metrics(workdir)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(r["step"] for r in read_metrics(workdir)) < 40

    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from the checkpoint at step" in rerun.stdout
    expected = read_metrics(finished_run[0])
    got = read_metrics(workdir)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for want, have in zip(expected, got):
        for key in want:
            if key != "tokens_per_sec":
                assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (want["step"], key)


def test_bad_input_through_the_binary_is_one_line_and_exit_code_2(tmp_path, data_dir):
    """The exit-code plumbing of launch/train.py; the cases themselves are checked in-process below."""
    for extra, message in ((["--config.train.no_such_field=1"], "no_such_field"),
                           (["--nonexistent_flag=1"], "nonexistent_flag"),
                           (["--config.data.length=128"], "longer than model.max_length")):
        proc = subprocess.run(tiny_flags(str(tmp_path / "w"), data_dir) + extra, env=env(),
                              capture_output=True, text=True, timeout=300)
        assert_usage_error(proc, message)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def _config(data_dir, **overrides):
    config = tiny_config(f"--config.data.data_dir={data_dir}", "--config.train.batch_size=16",
                         "--config.train.eval_batches=2")
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.batch_size": 12}, "not divisible by the data-parallel size"),  # 8 fake devices
        ({"data.length": 128}, "longer than model.max_length"),
        ({"model.num_heads": 3}, "model.num_heads"),
        ({"mesh.tensor": 8, "mesh.data": 1, "model.num_heads": 4}, "not divisible by mesh.tensor"),
        ({"train.learning_rate": float("nan")}, "train.learning_rate"),
        ({"train.eval_batches": 100}, "validation needs train.eval_batches"),  # 1,600 > the 128 held out
    ],
)
def test_bad_input_is_a_one_line_usage_error_before_any_work(overrides, message, tmp_path, data_dir):
    workdir = tmp_path / "w"
    with pytest.raises(UsageError, match=message) as info:
        train.train_and_evaluate(_config(data_dir, **overrides), str(workdir))
    assert "\n" not in str(info.value)
    assert not (workdir / "checkpoints").exists()


def test_unwritable_workdir_is_a_one_line_usage_error(tmp_path, data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match="cannot be written"):
        train.train_and_evaluate(_config(data_dir), str(blocker / "workdir"))
