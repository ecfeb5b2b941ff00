"""One writer per workdir or samples file, and writes that fail: a second writer stops at once in one line,
a killed writer's lock goes with it, a resume cuts metrics rows that a race or a failed write left, and a
full disk is one line that keeps every good checkpoint and whole sample."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import CONFIG, TINY_OVERRIDES, assert_usage_error, binary, run_binary, start_python, usage_error

from proseco_jax import checkpoint, cli, fileio, locks, metrics_writer
from proseco_jax.errors import UsageError


def _steps(workdir: str) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _train_args(workdir, data_dir, *flags) -> list[str]:
    return [f"--config={CONFIG}", f"--workdir={workdir}", *TINY_OVERRIDES,
            f"--config.data.data_dir={data_dir}", "--config.train.eval_every=0", "--config.train.log_every=1",
            "--config.train.warmup_steps=0", *flags]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("writers_data"))


# ------------------------------------------------------------------------------------------ metrics


def _rows(*steps) -> list[str]:
    return [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps]


def test_a_resume_keeps_the_strictly_increasing_metrics_rows_up_to_its_checkpoint():
    assert metrics_writer.increasing_prefix(_rows(1, 2, 3, 4), 3) == _rows(1, 2, 3)
    assert metrics_writer.increasing_prefix(_rows(5, 5, 10, 10, 15), 15) == _rows(5)
    assert metrics_writer.increasing_prefix(_rows(5, 10, 15, 5, 10), 15) == _rows(5, 10, 15)
    assert metrics_writer.increasing_prefix(_rows(2, 4) + ['{"step": 6, "lo'], 10) == _rows(2, 4)
    assert metrics_writer.increasing_prefix(["\n", *_rows(1, 2)], 2) == _rows(1, 2)


def test_the_metrics_writer_cuts_a_raced_file_back_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(_rows(5, 5, 10, 10, 15, 20)))
    writer = metrics_writer.MetricsWriter(str(tmp_path), resume_step=15, total_steps=30)
    writer.write(20, {"loss": 2.0})
    writer.close()
    assert _steps(str(tmp_path)) == [5, 20]


def test_a_failed_tensorboard_write_names_its_directory(tmp_path, monkeypatch):
    writer = metrics_writer.MetricsWriter(str(tmp_path), resume_step=0, total_steps=2)

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer._tb, "flush", full)
    with pytest.raises(fileio.WriteError) as info:
        writer.write(1, {"loss": 1.0})
    assert info.value.filename == str(tmp_path / "tensorboard") and info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    writer.close()


# -------------------------------------------------------------------------------------------- locks


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_goes_with_the_first(tmp_path):
    workdir = str(tmp_path / "w")
    with locks.sole_writer(workdir):
        with pytest.raises(UsageError, match=f"{workdir} is in use by PID {os.getpid()} on "
                                             f"{socket.gethostname()} \\("):
            with locks.sole_writer(workdir):
                pass
    assert not os.path.exists(workdir)  # It made the workdir for its lock, wrote nothing, and removed both.
    with locks.sole_writer(workdir):  # Free again.
        assert os.path.exists(locks.workdir_lock_path(workdir))


def test_a_lock_held_by_a_killed_process_does_not_block_the_next_writer(tmp_path):
    workdir = str(tmp_path / "w")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from proseco_jax import locks\n"
         "with locks.sole_writer(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)", workdir],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"in use by PID {holder.pid} "):
            with locks.sole_writer(workdir):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.exists(locks.workdir_lock_path(workdir))  # Left behind by the killed holder ...
    with locks.sole_writer(workdir):  # ... and taken at once.
        pass


def test_a_samples_file_written_by_another_sampler_is_refused_before_any_work(tmp_path):
    output = str(tmp_path / "samples.jsonl")
    with locks.sole_writer(output, workdir=False):
        proc = usage_error("sample.py", f"--workdir={tmp_path / 'no_such_workdir'}", f"--output={output}")
    assert_usage_error(proc, f"{output} is in use by PID {os.getpid()}")
    assert sorted(os.listdir(tmp_path)) == []


def test_a_conversion_into_a_workdir_in_use_is_refused_before_reading_its_source(tmp_path):
    workdir = str(tmp_path / "w")
    with locks.sole_writer(workdir):
        proc = usage_error("convert.py", f"--source={tmp_path / 'no_such_checkpoint'}",
                           f"--workdir={workdir}")
    assert_usage_error(proc, f"{workdir} is in use by PID {os.getpid()}")
    assert os.listdir(tmp_path) == []


def test_two_trainings_on_one_workdir_one_trains_and_the_other_stops_in_one_line(data_dir, tmp_path):
    """The second run starts while the first trains; then the first is SIGKILLed, leaving its lock file,
    which does not stop the next run from resuming to the end."""
    workdir = str(tmp_path / "w")

    def args(num_steps: int) -> list[str]:
        return _train_args(workdir, data_dir, f"--config.train.num_steps={num_steps}",
                           "--config.train.checkpoint_every=5")

    first = start_python(binary("train.py"), *args(100_000), capture=False)
    try:
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            assert first.poll() is None and time.time() < deadline, "the first run did not start training"
            time.sleep(0.5)
        second = run_binary("train.py", *args(100_000))
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2 and second.stdout == "", second.stdout + second.stderr[-3000:]
    line = _one_line(second.stderr)
    assert line.startswith(f"error: {workdir} is in use by PID {first.pid} on ") and "train.py" in line, line
    assert os.path.exists(locks.workdir_lock_path(workdir))
    saved = [int(name) for name in os.listdir(checkpoint.checkpoint_dir(workdir)) if name.isdigit()]
    end = max(saved, default=0) + 3
    resumed = run_binary("train.py", *args(end))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _steps(workdir) == list(range(1, end + 1))


def test_write_failures_are_found_through_wrappers_and_in_library_text():
    cause = OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl")
    try:
        try:
            raise cause
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as wrapped:
        assert fileio.write_failure(wrapped) == fileio.WriteFailure("/w/metrics.jsonl", os.strerror(28), True)
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "x/0" in OCDBT database at local file '
                             '"/w/c/": Failed writing: "/w/c/d/12b9": Failed to write 138310 bytes to file '
                             "12: No space left on device [os_error_code='28']")
    assert fileio.write_failure(tensorstore) == fileio.WriteFailure("/w/c/d/12b9", os.strerror(28), True)
    array_record = RuntimeError('Failed to finalize writing of split "train": write() failed: No space left '
                                "on device; writing /d/incomplete.X/train.array_record; at byte 98304")
    assert fileio.write_failure(array_record).path == "/d/incomplete.X/train.array_record"
    assert fileio.write_failure(FileNotFoundError(errno.ENOENT, "missing", "/in.txt")) is None
    assert fileio.write_failure(ValueError("a bug")) is None


def test_an_atomic_write_that_fails_names_its_path_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(fileio.WriteError) as info:
        fileio.atomic_write_json(str(tmp_path / "results.json"), {"a": 1})
    assert info.value.filename == str(tmp_path / "results.json") and info.value.errno == errno.EDQUOT
    assert os.listdir(tmp_path) == []


def test_any_binary_reports_a_failed_write_in_one_line_with_exit_code_1(tmp_path, monkeypatch):
    script = tmp_path / "writes_results.py"
    script.write_text("from proseco_jax import cli, fileio\n\n\ndef main(argv):\n"
                      f"    fileio.atomic_write_json({str(tmp_path / 'results.json')!r}, {{'a': 1}})\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, stderr = cli.run_in_process(str(script), [])
    assert code == 1
    assert _one_line(stderr) == (f"error: out of space writing {tmp_path / 'results.json'} (No space left "
                                 "on device); kept: the outputs written before it; free some space and rerun "
                                 "the same command")
    assert os.listdir(tmp_path) == ["writes_results.py"]


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_next_run_resumes(data_dir, tmp_path,
                                                                                 monkeypatch):
    workdir = str(tmp_path / "w")
    args = _train_args(workdir, data_dir, "--config.train.num_steps=6", "--config.train.checkpoint_every=2")
    save = checkpoint.save

    def full_at_step_4(manager, step, state, data_iter):
        if step == 4:
            os.makedirs(os.path.join(workdir, "checkpoints", f"4{checkpoint.TMP_SUFFIX}"))
            raise RuntimeError("save failed") from OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(workdir, "checkpoints",
                                                                      f"4{checkpoint.TMP_SUFFIX}", "state"))
        save(manager, step, state, data_iter)

    monkeypatch.setattr(checkpoint, "save", full_at_step_4)
    code, stderr = cli.run_in_process(binary("train.py"), args)
    assert code == 1, stderr[-3000:]
    line = _one_line(stderr)
    assert line.startswith(f"error: out of space writing checkpoint step 4 ({workdir}/checkpoints/4"), line
    assert f"kept: the last good checkpoint, step 2, in {workdir}/checkpoints;" in line, line
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]  # The partial step removed.
    monkeypatch.setattr(checkpoint, "save", save)
    code, stderr = cli.run_in_process(binary("train.py"), args)
    assert code == 0, stderr[-3000:]
    assert _steps(workdir) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------ a real full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 1600 KiB tmpfs (room for one tiny checkpoint, not two); `grow()` makes it 64 MiB. Skipped where
    mounting is not permitted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)

    yield str(mount_point), grow
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_training_on_a_full_disk_is_one_line_and_resumes_once_there_is_room(data_dir, small_disk):
    disk, grow = small_disk
    workdir = os.path.join(disk, "w")
    args = _train_args(workdir, data_dir, "--config.train.num_steps=6", "--config.train.checkpoint_every=2")
    proc = run_binary("train.py", *args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_line(proc.stderr)
    # Which write meets the full disk first (an array, orbax's metadata, the metrics) varies from run to run.
    kept = re.search(f"kept: the last good checkpoint, step (\\d+), in {workdir}/checkpoints;", line)
    assert line.startswith("error: out of space writing ") and kept, line
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [kept.group(1)]
    grow()
    proc = run_binary("train.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from the checkpoint at step {kept.group(1)}" in proc.stdout
    assert _steps(workdir) == [1, 2, 3, 4, 5, 6]


def test_sampling_onto_a_full_disk_is_one_line_and_keeps_whole_samples(tiny_trained_workdir, small_disk):
    workdir, _, overrides = tiny_trained_workdir
    disk, grow = small_disk
    with open(os.path.join(disk, "filler"), "wb") as f:  # Leaves a few KiB.
        f.write(b"\0" * (1600 - 12) * 1024)
    output = os.path.join(disk, "samples.jsonl")
    args = [f"--workdir={workdir}", f"--output={output}", "--num_samples=256",
            "--config.sampling.batch_size=8", "--config.sampling.steps=2", *overrides]
    proc = run_binary("sample.py", f"--config={CONFIG}", *args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_line(proc.stderr)
    assert line.startswith(f"error: out of space writing {output} ("), line
    with open(output, "rb") as f:
        lines = f.read().split(b"\n")
    assert lines[-1] == b"" and f"kept: the {len(lines) - 1} whole lines of {output}" in line, line
    assert not os.path.exists(locks.file_lock_path(output))
    grow()
    proc = run_binary("sample.py", f"--config={CONFIG}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(output) as f:
        assert len(f.readlines()) == 256


def test_preparing_data_on_a_full_disk_is_one_line(small_disk):
    disk, _ = small_disk
    with open(os.path.join(disk, "filler"), "wb") as f:
        f.write(b"\0" * (1600 - 100) * 1024)
    proc = run_binary("prepare_data.py", f"--config={CONFIG}", *TINY_OVERRIDES,
                      "--config.data.num_train=20000", f"--config.data.data_dir={disk}/data")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_line(proc.stderr)
    assert line.startswith(f"error: out of space writing {disk}/data/markov_language/"), line
    assert "no partial corpus" in line, line
