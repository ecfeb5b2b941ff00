"""Faults injected on purpose: what survives them. Divergence, damaged checkpoints, interrupts, damaged
data and bad paths must never cost a good checkpoint or a finished sample, and bad input is one line."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import (
    CONFIG,
    TINY_OVERRIDES,
    assert_usage_error,
    binary,
    run_binary,
    run_python,
    start_python,
    tiny_config,
    usage_error,
)

from proseco_jax import checkpoint, config_base, inference, samples_io, sharding, state, train
from proseco_jax.errors import Halted, UsageError


def _config(data_dir, *flags):
    return tiny_config(f"--config.data.data_dir={data_dir}", "--config.train.batch_size=8",
                       "--config.train.eval_every=0", "--config.train.log_every=1",
                       "--config.train.warmup_steps=0", *flags)


def _steps(workdir) -> list[int]:
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _metrics_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fault_data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A run with checkpoints at steps 3 and 6 (6 steps), trained in-process."""
    workdir = str(tmp_path_factory.mktemp("fault_run") / "work")
    train.train_and_evaluate(_config(data_dir, "--config.train.num_steps=6",
                                     "--config.train.checkpoint_every=3"), workdir)
    assert _steps(workdir) == [3, 6]
    return workdir


def _copy(trained, tmp_path) -> str:
    workdir = str(tmp_path / "work")
    shutil.copytree(trained, workdir)
    return workdir


# ------------------------------------------------------------------------------------------- divergence


def test_divergence_halts_in_one_line_and_never_writes_a_non_finite_checkpoint(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    before = _steps(workdir)
    config = _config(data_dir, "--config.train.num_steps=20", "--config.train.checkpoint_every=1",
                     "--config.train.learning_rate=1e38")
    with pytest.raises(Halted, match="training halted at step") as info:
        train.train_and_evaluate(config, workdir)
    assert "\n" not in str(info.value) and "last good checkpoint is step" in str(info.value)
    # The good steps are still there (keep_checkpoints=3 rotation never ran past them with bad ones) ...
    assert set(before) <= set(_steps(workdir)) or len(_steps(workdir)) == 3
    # ... and every checkpoint that exists restores to finite parameters.
    typed = config_base.resolve(config)
    loaded = inference.load_model(typed, workdir, mesh=sharding.make_mesh(typed.mesh, jax.devices()[:1]))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(loaded.params))


def test_halt_mode_halts_at_the_next_log_step_naming_the_first_bad_step(trained, data_dir, tmp_path):
    """The loop never waits on a step between boundaries, so a divergence is read at the next log step."""
    workdir = _copy(trained, tmp_path)
    config = _config(data_dir, "--config.train.num_steps=20", "--config.train.checkpoint_every=100",
                     "--config.train.log_every=5", "--config.train.learning_rate=1e38")
    with pytest.raises(Halted, match="training halted at step 10: ") as info:
        train.train_and_evaluate(config, workdir)
    first = int(re.search(r"from step (\d+)", str(info.value)).group(1))
    assert 7 <= first <= 10 and "the last good checkpoint is step 6" in str(info.value)
    assert _steps(workdir) == [3, 6]


def test_skip_mode_drops_bad_updates_and_halts_after_max_skips(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    config = _config(data_dir, "--config.train.num_steps=30", "--config.train.checkpoint_every=100",
                     "--config.train.learning_rate=1e38", "--config.train.nonfinite=skip",
                     "--config.train.max_skips=3", "--config.train.log_every=15")
    with pytest.raises(Halted, match="training halted at step 15: ") as info:
        train.train_and_evaluate(config, workdir)
    # The run is read at the next boundary (the last step): at least max_skips bad steps, the first named.
    run, first = map(int, re.search(r"(\d+) step\(s\) in a row from step (\d+)", str(info.value)).groups())
    assert run >= 3 and 7 <= first <= 15 - run + 1
    assert _steps(workdir) == [3, 6]  # nothing new was saved, nothing was deleted


# ----------------------------------------------------------------------------------- damaged checkpoints


def _damage(step_dir: str, kind: str) -> None:
    if kind == "truncated_array":
        for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
            with open(path, "r+b") as f:
                f.truncate(8)
    elif kind == "no_metadata":
        os.remove(os.path.join(step_dir, "state", "_METADATA"))
    elif kind == "garbage_iterator":
        for path in glob.glob(os.path.join(step_dir, "data_iter", "*")):
            with open(path, "w") as f:
                f.write("{garbage")
    elif kind == "no_iterator":
        shutil.rmtree(os.path.join(step_dir, "data_iter"))
    elif kind == "empty_step":
        shutil.rmtree(step_dir)
        os.makedirs(step_dir)
    elif kind == "no_state":
        shutil.rmtree(os.path.join(step_dir, "state"))


DAMAGE = ["truncated_array", "no_metadata", "garbage_iterator", "no_iterator", "empty_step", "no_state"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_latest_checkpoint_is_moved_aside_and_training_resumes_from_the_one_before(
        trained, data_dir, tmp_path, kind, capsys):
    workdir = _copy(trained, tmp_path)
    _damage(os.path.join(workdir, "checkpoints", "6"), kind)
    _, step = train.train_and_evaluate(_config(data_dir, "--config.train.num_steps=7",
                                               "--config.train.checkpoint_every=3"), workdir)
    assert step == 7
    out = capsys.readouterr()
    assert "resumed from the checkpoint at step 3" in out.out
    assert "checkpoint step 6 is damaged" in out.err and "corrupt-6" in out.err
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt-6"))  # kept, never deleted
    assert _steps(workdir) == [3, 6, 7]
    # metrics.jsonl reads as one run from the restored step on: never ahead of the checkpoint.
    assert _metrics_steps(workdir) == list(range(1, 8))


def test_sampling_skips_a_damaged_checkpoint_without_moving_it(trained, data_dir, tmp_path, capsys):
    workdir = _copy(trained, tmp_path)
    _damage(os.path.join(workdir, "checkpoints", "6"), "truncated_array")
    config = config_base.resolve(_config(data_dir))
    loaded = inference.load_model(config, workdir, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
    assert loaded.step == 3
    assert "checkpoint step 6 is damaged" in capsys.readouterr().err
    assert _steps(workdir) == [3, 6]


def test_resuming_with_another_model_shape_names_the_fields_and_moves_nothing(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    with pytest.raises(UsageError, match="does not fit the config's model: block_0/adaln/bias") as info:
        train.train_and_evaluate(_config(data_dir, "--config.model.hidden_size=32",
                                         "--config.train.num_steps=8"), workdir)
    assert "\n" not in str(info.value)
    assert "[6, 64] in the checkpoint vs [6, 32] in the config" in str(info.value)
    assert _steps(workdir) == [3, 6] and not glob.glob(os.path.join(workdir, "checkpoints", "corrupt-*"))


def test_resuming_with_another_optimizer_is_a_usage_error_and_moves_nothing(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    with pytest.raises(UsageError, match="another optimizer state"):
        train.train_and_evaluate(_config(data_dir, "--config.train.grad_clip=0.0",
                                         "--config.train.num_steps=8"), workdir)
    assert _steps(workdir) == [3, 6] and not glob.glob(os.path.join(workdir, "checkpoints", "corrupt-*"))


def test_checkpoints_that_cannot_be_written_fail_before_training(data_dir, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("a file where the checkpoint directory should be")
    with pytest.raises(UsageError, match="checkpoints .* cannot be written"):
        train.train_and_evaluate(_config(data_dir, "--config.train.num_steps=2"), str(workdir))
    assert not (workdir / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------- data


def test_a_corrupted_training_record_is_one_line_and_the_last_checkpoint_survives(trained, data_dir,
                                                                                  tmp_path):
    damaged_data = str(tmp_path / "data")
    shutil.copytree(data_dir, damaged_data)
    for path in glob.glob(os.path.join(damaged_data, "markov_language", "*", "*", "*train.array_record*")):
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 3)
            f.write(b"\0" * 4096)
    workdir = _copy(trained, tmp_path)
    with pytest.raises(UsageError, match="damaged: delete that directory and rerun to rebuild") as info:
        train.train_and_evaluate(_config(damaged_data, "--config.train.num_steps=400"), workdir)
    assert "\n" not in str(info.value) and "train split" in str(info.value)
    assert _steps(workdir)[:2] == [3, 6]


def test_the_default_data_dir_is_a_cache_not_the_current_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("PROSECO_DATA_DIR", raising=False)
    assert config_base.data_directory("") == os.path.expanduser("~/.cache/proseco_jax/data")
    monkeypatch.setenv("PROSECO_DATA_DIR", str(tmp_path))
    assert config_base.data_directory("") == str(tmp_path)
    assert config_base.data_directory("rel") == os.path.abspath("rel")


# ------------------------------------------------------------------------------------- samples files


def test_sample_output_checks_run_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        samples_io.prepare_output(str(tmp_path), resume=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write output"):
        samples_io.prepare_output(str(blocker / "s.jsonl"), resume=True)
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"note": 1}\n')
    with pytest.raises(UsageError, match="not a sample; use --noresume"):
        samples_io.prepare_output(str(foreign), resume=True)


def test_an_interrupted_samples_file_keeps_its_whole_lines_only(tmp_path):
    path = str(tmp_path / "s.jsonl")
    samples_io.append(path, [{"tokens": [1, 2]}, {"tokens": [3, 4]}])
    with open(path, "a") as f:
        f.write('{"tokens": [5')  # a write cut short
    assert samples_io.prepare_output(path, resume=True) == 2
    assert samples_io.read_jsonl(path) == [{"tokens": [1, 2]}, {"tokens": [3, 4]}]
    assert samples_io.prepare_output(path, resume=False) == 0 and os.path.getsize(path) == 0


def test_a_samples_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"tokens": [1]}\n\xff\xfe\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        samples_io.read_jsonl(str(path))


def test_sampling_a_config_that_differs_from_the_trained_model_names_the_fields(trained, data_dir):
    config = config_base.resolve(_config(data_dir, "--config.data.length=16", "--config.model.mlp_ratio=2"))
    with pytest.raises(UsageError, match="model.mlp_ratio=2 \\(trained with 4\\).*data.length=16"):
        inference.check_workdir_config(config, trained)
    inference.check_workdir_config(config_base.resolve(_config(data_dir)), trained)  # the same: no error


def test_sample_binary_resumes_an_interrupted_file_to_the_same_samples(tiny_trained_workdir, tmp_path):
    workdir, _, overrides = tiny_trained_workdir
    common = [f"--config={CONFIG}", f"--workdir={workdir}", "--config.sampling.batch_size=2",
              "--config.sampling.steps=4", *overrides]
    part, whole = str(tmp_path / "part.jsonl"), str(tmp_path / "whole.jsonl")
    for output, count in ((part, 2), (part, 4), (whole, 4)):
        proc = run_binary("sample.py", *common, f"--output={output}", f"--num_samples={count}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert samples_io.read_jsonl(part) == samples_io.read_jsonl(whole)
    assert "sampling 2 of 4 samples" in proc.stdout or len(samples_io.read_jsonl(part)) == 4


# ------------------------------------------------------------------------------------------ interrupts


def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not os.path.exists(path):
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_save_a_checkpoint_and_exit_cleanly(data_dir, tmp_path, signum):
    workdir = str(tmp_path / "work")
    flags = [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
             "--config.train.num_steps=100000", "--config.train.batch_size=8", "--config.train.eval_every=0",
             "--config.train.log_every=1", "--config.train.checkpoint_every=100000",
             *[f for f in TINY_OVERRIDES if "batch_size" not in f]]
    proc = start_python(binary("train.py"), *flags)
    _wait_for(os.path.join(workdir, "metrics.jsonl"), proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert f"{name}: saved the checkpoint at step" in out
    steps = _steps(workdir)
    # Every step up to the checkpoint's is logged once (log steps are read one step late), none after it.
    assert len(steps) == 1 and _metrics_steps(workdir) == list(range(1, steps[0] + 1))


def test_a_second_ctrl_c_exits_at_once_with_code_130():
    code = ("import os, signal, time\n"
            "from proseco_jax.stopping import StopRequest\n"
            "with StopRequest('the test') as stop:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    assert stop.requested\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "print('not reached')\n")
    proc = run_python("-c", code, timeout=60)
    assert proc.returncode == 130
    assert "not reached" not in proc.stdout
    assert "SIGINT again: exiting now" in proc.stderr and "Traceback" not in proc.stderr


def test_a_config_file_that_does_not_load_is_one_line(tmp_path):
    for text in ("def get_config(:\n", "def get_config():\n    raise RuntimeError('boom')\n"):
        path = tmp_path / "bad_config.py"
        path.write_text(text)
        assert_usage_error(usage_error("train.py", f"--config={path}", f"--workdir={tmp_path / 'w'}"),
                           "cannot load the config")


def test_sampling_refuses_non_finite_parameters(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    config = config_base.resolve(_config(data_dir))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    placed = state.ModelOnMesh.create(config, mesh)
    manager = checkpoint.make_manager(workdir, 5)
    abstract, _, _ = placed.train_state(train.make_optimizer(config.train))
    step, restored = checkpoint.restore(manager, abstract, None)
    poisoned = restored.replace(ema_params=jax.tree.map(lambda x: x * np.nan, restored.ema_params))
    checkpoint.save(manager, step + 1, poisoned, None)
    manager.wait_until_finished()
    manager.close()
    with pytest.raises(UsageError, match="non-finite parameters"):
        inference.load_model(config, workdir, mesh=mesh)


def test_an_interrupted_sweep_keeps_the_rows_it_finished(tiny_trained_workdir):
    from proseco_jax.data import chain as markov_chain
    from proseco_jax.data import datasets
    from proseco_jax.evaluation import grid, markov_scoring

    workdir, _, overrides = tiny_trained_workdir
    config = config_base.resolve(tiny_config(*overrides))
    loaded = inference.load_model(config, workdir, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
    scorer = markov_scoring.MarkovScorer(markov_chain.load_chain(datasets.load(config.data).chain_path))
    settings = [grid.Setting("MDLM", config.sampling.replace(sampler="mdlm", steps=t)) for t in (2, 3, 4)]
    asked = []
    rows, outputs = grid.run_sweep(loaded, settings, scorer, 4, workers=1, progress=None,
                                   stop=lambda: asked.append(1) or len(asked) > 1)
    assert len(rows) == len(outputs) == 1 and rows[0]["steps"] == 4  # the longest row ran first
