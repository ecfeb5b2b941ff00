"""Tests of launch/benchmark.py as a user runs it: its JSON last line and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import CONFIG, REPO, assert_usage_error, run_binary

from proseco_jax import benchmarking

TINY = ["--layers=1", "--hidden=32", "--heads=2", "--length=16", "--batch=8", "--steps=2", "--warmup=1"]
REQUIRED = ("proseco_tokens_per_sec", "mdlm_tokens_per_sec", "proseco_over_mdlm_time", "mfu", "matmul_gflops",
            "model_gflops_per_step", "proseco_step_sec", "mdlm_step_sec", "compile_sec",
            "layers", "hidden", "heads", "length", "batch", "vocab", "device_kind", "matmul_size")


def run_benchmark(*args: str, config: str = CONFIG) -> subprocess.CompletedProcess:
    return run_binary("benchmark.py", f"--config={config}", *args, timeout=300)


def test_train_step_benchmark_ends_with_a_json_line_of_positive_figures():
    result = run_benchmark("--what=train_step", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(REQUIRED) <= set(figures)
    # The figures are consistent with each other: tokens/s from the step time, MFU from the two rates.
    assert figures["proseco_tokens_per_sec"] == pytest.approx(8 * 16 / figures["proseco_step_sec"], rel=1e-4)
    assert figures["proseco_over_mdlm_time"] == pytest.approx(
        figures["proseco_step_sec"] / figures["mdlm_step_sec"], rel=1e-4)
    mfu = figures["model_gflops_per_sec"] / figures["matmul_gflops"]
    assert figures["mfu"] == pytest.approx(mfu, rel=1e-3)
    assert (figures["layers"], figures["hidden"], figures["heads"], figures["length"], figures["batch"]) == (
        1, 32, 2, 16, 8)
    assert figures["devices"] == 1
    # A CPU has no bf16 peak in the table, so there is no MFU against a peak; the matmul is the CPU's size.
    assert figures["peak_bf16_gflops"] is None and "peak_mfu" not in figures
    assert figures["matmul_size"] == benchmarking.MATMUL_SIZE
    # ProSeCo runs two backbone passes, MDLM one: the model FLOPs say so exactly.
    assert figures["model_gflops_per_step"] == pytest.approx(2 * figures["mdlm_model_gflops_per_step"])
    # Only what this run measured: no figure of another machine or day is mixed into the output.
    assert not [key for key in figures if "reference" in key or "speedup" in key]


def test_sample_benchmark_times_scan_and_host_loop_with_equal_nfe():
    result = run_benchmark("--what=sample", *TINY[:5], "--batch=4", "--steps=1", "--warmup=0",
                           "--config.sampling.steps=4", "--config.sampling.corrector_steps=1")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["scan_over_hostloop"] == pytest.approx(
        figures["hostloop_run_sec"] / figures["scan_run_sec"], rel=1e-4)
    assert figures["sample_batch"] == 4 and figures["sampling_steps"] == 4
    # Both loops run the same step function, so they make the same batched model calls: at most T
    # predictor calls plus S per corrector call.
    assert figures["model_calls"] == figures["hostloop_model_calls"]
    assert 1 <= figures["model_calls"] <= 4 + 4 * 1
    assert figures["nfe"] == pytest.approx(figures["predictor_nfe"] + figures["corrector_nfe"])


@pytest.mark.parametrize("what", ["train_step", "sample"])
def test_benchmark_runs_for_a_llada_model_and_ends_with_its_json_line(what):
    # The tiny --shape preset sets the DiT's cond_dim, which LLaDA lacks: it applies where it exists.
    sampling = ["--batch=4", "--steps=1", "--warmup=0", "--config.sampling.steps=4",
                "--config.sampling.corrector_steps=1"] if what == "sample" else []
    llada = os.path.join(REPO, "configs", "llada_tiny.py")
    result = run_benchmark(f"--what={what}", "--shape=tiny", *TINY, *sampling, config=llada)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["model"] == "llada" and figures["what"] == what and "cond_dim" not in figures
    assert (figures["layers"], figures["hidden"], figures["heads"], figures["length"]) == (1, 32, 2, 16)
    assert figures["mfu"] > 0 and "mlp_hidden_size" in figures


def test_bad_input_exits_2_with_one_line():
    assert_usage_error(run_benchmark("--heads=3", "--hidden=32"), "model.hidden_size=32")


def test_chip_peaks_are_found_by_a_word_of_the_device_kind():
    assert benchmarking.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert benchmarking.peak_bf16_flops("NVIDIA H200") == 989e12
    assert benchmarking.peak_bf16_flops("cpu") is None


def test_vs_reference_without_a_reference_times_ours_and_says_so_in_one_line():
    result = run_benchmark("--what=vs_reference", "--shapes=tiny", "--precisions=fp32,bf16", *TINY[:5],
                           "--steps=1", "--warmup=0")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["skipped"] for r in records if r.get("part") == "reference"] == [
        "no --ref_dir and --bench_ref: only our figures"]
    rows = [r for r in records if "step" in r]
    assert [(r["precision"], r["step"]) for r in rows] == [
        ("fp32", "proseco"), ("fp32", "mdlm"), ("bf16", "proseco"), ("bf16", "mdlm")]
    assert all(r["ours_tokens_per_sec"] > 0 and r["mfu"] > 0 and r["theirs_tokens_per_sec"] is None
               and (r["layers"], r["hidden"], r["length"], r["batch"]) == (1, 32, 16, 8) for r in rows)
    # The table closes the output: a header, its rule, one row per JSON row; the reference's columns blank.
    table = lines[-len(rows) - 2:]
    assert table[0].startswith("| shape | precision | step | ours tok/s | theirs tok/s")
    assert table[2].startswith("| tiny | fp32 | ProSeCo |")
    assert table[2].endswith(f"| - | - | {rows[0]['mfu']:.2f} |")


def test_vs_reference_table_rows_put_ours_over_theirs():
    ours = {"proseco_tokens_per_sec": 300.0, "mdlm_tokens_per_sec": 900.0, "mfu": 0.5, "mdlm_mfu": 0.4}
    rows = benchmarking.vs_reference_rows("large", "bf16", ours, {"proseco": 200.0, "mdlm": 1000.0})
    assert [(r["step"], r["ours_over_theirs"]) for r in rows] == [("proseco", 1.5), ("mdlm", 0.9)]
    assert benchmarking.markdown_table(rows).splitlines()[2:] == [
        "| large | bf16 | ProSeCo | 300 | 200 | 1.50x | 0.50 |",
        "| large | bf16 | MDLM | 900 | 1,000 | 0.90x | 0.40 |"]


@pytest.mark.parametrize("flag", ["--shapes=tiny,huge", "--precisions=fp16"])
def test_vs_reference_rejects_unknown_shapes_and_precisions(flag):
    assert_usage_error(run_benchmark("--what=vs_reference", flag), flag.split("=")[1].split(",")[-1])
