"""Tests of launch/device_check.py in its --smoke mode: every part runs, every figure is a JSON line, a
failing part leaves the others to run, and the table ends the output."""

from __future__ import annotations

import json
import os

from conftest import assert_usage_error, run_binary, usage_error

PARTS = ("reference", "device", "train_owt", "train_llada", "sample")


def test_smoke_run_prints_a_json_line_per_figure_and_a_table(tmp_path):
    # A reference folder without the harness: that part fails with one error line and the rest go on.
    broken = tmp_path / "bench_ref"
    broken.mkdir()
    out = tmp_path / "lines.jsonl"
    result = run_binary("device_check.py", "--smoke", f"--out={out}", f"--ref_dir={tmp_path}",
                        f"--bench_ref={broken}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout.splitlines()
    lines = [json.loads(line) for line in stdout if line.startswith("{")]
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    by_part = {part: [x for x in lines if x["part"] == part] for part in PARTS}
    assert all(by_part.values()), [x["part"] for x in lines]
    assert "error" in by_part["reference"][-1] and "bench_ref.py" in by_part["reference"][-1]["error"]
    assert not [x for x in lines if x["part"] != "reference" and ("error" in x or "skipped" in x)], lines
    for part in ("train_owt", "train_llada"):
        [train] = by_part[part]
        assert train["batch"] == 4 and train["dtype"] == "bfloat16"
        assert train["proseco_tokens_per_sec"] > 0 and train["mfu"] > 0
        assert train["proseco_over_mdlm_time"] == train["proseco_step_sec"] / train["mdlm_step_sec"]
    settings = [(x["sampling_steps"], x["corrector_steps"]) for x in by_part["sample"]]
    assert settings == [(4, 0), (4, 2)]
    assert all(x["model_calls"] == x["hostloop_model_calls"] for x in by_part["sample"])
    # The table: a header, then two rows per train part (ProSeCo, MDLM) and per sampler setting (scan, host
    # loop), and a row for the failed part.
    header = next(i for i, line in enumerate(stdout) if line.startswith("| part |"))
    rows = stdout[header + 2:]
    assert all(row.startswith("| ") and row.endswith("|") for row in rows), rows
    assert len(rows) == 2 * 2 + 2 * 2 + 1
    assert sum(row.startswith("| sample scan") for row in rows) == 2


def test_bad_input_exits_2_with_one_line():
    assert_usage_error(usage_error("device_check.py", "--budget_sec=0"), "budget_sec")
    assert_usage_error(usage_error("device_check.py", "--smoke", "extra"), "unexpected arguments")


def test_reference_runner_refuses_a_missing_folder(tmp_path):
    result = run_binary("device_check_ref.py", f"--ref_dir={tmp_path / 'absent'}", f"--bench_ref={tmp_path}")
    assert_usage_error(result, "--ref_dir=")
    assert not os.path.exists(tmp_path / "absent")


def test_table_from_a_file_of_lines(tmp_path):
    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps({"part": "train_owt", "batch": 64, "oom": "RESOURCE_EXHAUSTED"}) + "\n"
                     + json.dumps({"part": "sample", "skipped": "estimated 90 s, 10 s left"}) + "\n")
    result = run_binary("device_check.py", f"--table_from={lines}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = result.stdout.strip().splitlines()
    assert rows[0].startswith("| part |") and len(rows) == 4
    assert "out of memory at batch 64" in rows[2] and "estimated 90 s" in rows[3]
    assert_usage_error(usage_error("device_check.py", f"--table_from={tmp_path / 'absent.jsonl'}"),
                       "--table_from=")
