"""End-to-end checks of `launch/sample.py`: train a few steps with `launch/train.py`, then every sampler
writes valid JSONL; bad input is one line and exit code 2."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "synthetic.py")
VOCAB, LENGTH = 16, 32

SHARED = [
    "--config.model.num_layers=1",
    "--config.model.hidden_size=64",
    "--config.model.num_heads=4",
    "--config.model.cond_dim=32",
    f"--config.model.max_length={LENGTH}",
    f"--config.data.vocab_size={VOCAB}",
    f"--config.data.length={LENGTH}",
    "--config.data.num_train=1000",
    "--config.data.num_eval=128",
]


def env():
    e = dict(os.environ)
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
    e["JAX_PLATFORMS"] = "cpu"
    return e


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_e2e")
    workdir, data_dir = str(root / "work"), str(root / "data")
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch", "train.py"),
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.train.num_steps=4",
        "--config.train.batch_size=8",
        "--config.train.log_every=2",
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=4",
    ]
    proc = subprocess.run(cmd + SHARED, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, data_dir


def run_sample(trained, output, *extra):
    workdir, data_dir = trained
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch", "sample.py"),
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--output={output}",
        f"--config.data.data_dir={data_dir}",
        "--config.sampling.batch_size=4",
        *SHARED,
        *extra,
    ]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "sampler_flags",
    [
        [
            "--config.sampling.sampler=proseco",
            "--config.sampling.steps=8",
            "--config.sampling.corrector_steps=2",
        ],
        ["--config.sampling.sampler=mdlm", "--config.sampling.steps=8", "--history"],
        ["--config.sampling.sampler=remdm", "--config.sampling.steps=8"],
        ["--config.sampling.sampler=confidence", "--config.sampling.steps=8"],
        [
            "--config.sampling.sampler=llada_block",
            "--config.sampling.steps=6",
            "--config.sampling.block_length=8",
            "--prompt=1,2,3,4,5,6,7,8",
        ],
    ],
    ids=["proseco", "mdlm", "remdm", "confidence", "llada_block"],
)
def test_every_sampler_writes_valid_jsonl(trained, tmp_path, sampler_flags):
    output = tmp_path / "samples.jsonl"
    proc = run_sample(trained, str(output), "--num_samples=6", *sampler_flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert len(row["tokens"]) == LENGTH
        assert all(0 <= t < VOCAB for t in row["tokens"])
        assert row["text"].split() == [f"t{t}" for t in row["tokens"]]
        assert row["nfe"] == row["predictor_nfe"] + row["corrector_nfe"]
        assert row["predictor_nfe"] >= 1
        if "--history" in sampler_flags:
            assert len(row["history"]) == 8 and row["history"][-1] == row["tokens"]
        if "--prompt=1,2,3,4,5,6,7,8" in sampler_flags:
            assert row["tokens"][:8] == [1, 2, 3, 4, 5, 6, 7, 8]
        if "mdlm" in sampler_flags[0]:
            assert row["corrector_nfe"] == 0
    assert not os.path.exists(str(output) + ".partial")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.sampling.corrector_steps=-1"], "corrector_steps"),
        (["--config.sampling.sampler=confidence", f"--config.sampling.steps={LENGTH + 1}"], "steps"),
        ([f"--prompt={','.join(['1'] * (LENGTH + 1))}"], "prompt"),
        (["--prompt=1,99"], "99"),
    ],
    ids=["negative_S", "confidence_T_too_large", "prompt_too_long", "prompt_id_out_of_vocab"],
)
def test_bad_sampling_input_is_one_line_and_exit_code_2(trained, tmp_path, extra, message):
    proc = run_sample(trained, str(tmp_path / "s.jsonl"), "--num_samples=2", *extra)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_missing_checkpoint_is_one_line_and_exit_code_2(tmp_path):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    proc = run_sample((str(workdir), str(tmp_path / "data")), str(tmp_path / "s.jsonl"), "--num_samples=2")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "no checkpoint" in proc.stderr
