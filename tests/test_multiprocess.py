"""Multi-host runs on localhost: 2 processes x 2 CPU devices (gloo collectives) against 1 process x 4
devices. Each process reads its own rows, checkpoints are written and restored across processes, and only
process 0 writes metrics and samples."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
from conftest import CONFIG, TINY_OVERRIDES, binary, start_python

TRAIN_FLAGS = [*TINY_OVERRIDES, "--config.train.batch_size=8", "--config.train.log_every=1",
               "--config.train.eval_every=0", "--config.train.checkpoint_every=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: str, args: list[str], *, processes: int, devices: int) -> list:
    """Starts launch/<script> as `processes` processes of `devices` CPU devices each."""
    cmd = [binary(script), *args]
    if processes == 1:
        return [start_python(*cmd, devices=devices)]
    port = _free_port()
    return [start_python(*cmd, "--multihost", f"--coordinator_address=127.0.0.1:{port}",
                         f"--num_processes={processes}", f"--process_id={i}", devices=devices)
            for i in range(processes)]


def finish(procs: list, timeout: float = 600) -> list[str]:
    """Waits for the processes of `start`; returns their stdout."""
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def finish_all(*groups: list, timeout: float = 600) -> list[list[str]]:
    """`finish` of each group of processes running at once; once one fails, the others still running are
    killed (they would go on holding their workdirs and the cores)."""
    try:
        return [finish(group, timeout) for group in groups]
    finally:
        for p in (p for group in groups for p in group):
            if p.poll() is None:
                p.kill()
                p.wait()


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _assert_same_losses(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in ("loss", "mdm_loss", "corrector_loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)


def _start_train(workdir: str, data: str, steps: int, processes: int) -> list:
    args = [f"--config={CONFIG}", f"--workdir={workdir}", data, *TRAIN_FLAGS,
            f"--config.train.num_steps={steps}"]
    return start("train.py", args, processes=processes, devices=4 // processes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (4 devices) for 9 steps; two processes (2 devices each) for 6, then resumed to 9 by two
    processes and, from a copy of the same checkpoint, by one. Runs on different workdirs run at once."""
    root = tmp_path_factory.mktemp("multiprocess")
    data = f"--config.data.data_dir={root / 'data'}"  # Prepared once, by whichever run takes its lock first.
    one, two, mixed = str(root / "one"), str(root / "two"), str(root / "mixed")
    _, first = finish_all(_start_train(one, data, 9, processes=1), _start_train(two, data, 6, processes=2))
    shutil.copytree(two, mixed)
    resumed, mixed_out = finish_all(_start_train(two, data, 9, processes=2),
                                    _start_train(mixed, data, 9, processes=1))
    return dict(one=one, two=two, mixed=mixed, first=first, resumed=resumed, mixed_out=mixed_out)


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one_process_with_the_same_devices(runs):
    _assert_same_losses(_metrics(runs["one"])[:6], _metrics(runs["two"])[:6])
    # Only process 0 reports progress (and writes metrics).
    assert "step 6/6" in runs["first"][0] and "step 6/6" not in runs["first"][1]


@pytest.mark.slow
def test_the_two_process_checkpoint_resumes_on_two_processes_and_on_one(runs):
    assert "resumed from the checkpoint at step 6" in runs["resumed"][0]
    assert "resumed from the checkpoint at step 6" in runs["mixed_out"][0]
    for workdir in (runs["two"], runs["mixed"]):
        assert [r["step"] for r in _metrics(workdir)] == list(range(1, 10))
        _assert_same_losses(_metrics(runs["one"]), _metrics(workdir))


@pytest.mark.slow
def test_sampling_as_two_processes_writes_one_complete_samples_file(runs, tmp_path):
    output = str(tmp_path / "samples.jsonl")
    flags = [f"--workdir={runs['two']}", f"--output={output}", "--num_samples=6",
             "--config.sampling.batch_size=4", "--config.sampling.steps=4"]
    # One process with the same devices, at the same time, to draw the same samples.
    single = str(tmp_path / "single.jsonl")
    single_flags = [*flags[:1], f"--output={single}", *flags[2:]]
    stdout, _ = finish_all(
        start("sample.py", [f"--config={CONFIG}", *TINY_OVERRIDES, *flags], processes=2, devices=2),
        start("sample.py", [f"--config={CONFIG}", *TINY_OVERRIDES, *single_flags], processes=1, devices=4))
    with open(output) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 6 and all(len(r["tokens"]) == 32 for r in rows)
    assert "wrote 6 samples" in stdout[0] and "wrote" not in stdout[1]
    with open(single) as f:
        assert [json.loads(line)["tokens"] for line in f] == [r["tokens"] for r in rows]
