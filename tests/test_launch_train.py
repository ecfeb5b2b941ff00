"""End-to-end checks of `launch/train.py`: the metrics contract, falling loss, resume after SIGKILL, and
bad input reported as one line with exit code 2."""

import os

import pytest
from conftest import (
    CONFIG,
    TINY_MODEL,
    assert_resumes_after_sigkill,
    assert_usage_error,
    read_metrics,
    run_binary,
    tiny_config,
    usage_error,
)

from proseco_jax import train
from proseco_jax.errors import UsageError


def tiny_flags(workdir, data_dir, **overrides):
    values = {
        **{f"model.{field}": value for field, value in TINY_MODEL.items()},
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
    return [f"--config={CONFIG}", f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("markov_data"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    proc = run_binary("train.py", *tiny_flags(workdir, data_dir))
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
    proc = run_binary("train.py", *tiny_flags(workdir, data_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from the checkpoint at step 40" in proc.stdout
    assert read_metrics(workdir) == before


def test_sigkill_then_rerun_logs_the_same_metrics_as_an_uninterrupted_run(finished_run, data_dir, tmp_path):
    workdir = str(tmp_path / "killed")
    assert_resumes_after_sigkill(tiny_flags(workdir, data_dir), workdir, finished_run[0], kill_after=25)


def test_bad_input_through_the_binary_is_one_line_and_exit_code_2(tmp_path, data_dir):
    """The exit-code plumbing of launch/train.py in a real process; the other cases run in this one."""
    flags = tiny_flags(str(tmp_path / "w"), data_dir)
    assert_usage_error(run_binary("train.py", *flags, "--config.train.no_such_field=1"), "no_such_field")
    for extra, message in (("--nonexistent_flag=1", "nonexistent_flag"),
                           ("--config.data.length=128", "longer than model.max_length"),
                           ("surplus", "unexpected arguments: surplus")):
        assert_usage_error(usage_error("train.py", *flags, extra), message)
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
