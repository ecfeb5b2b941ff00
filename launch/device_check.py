"""The device check: what one accelerator does with our train step and sampler, next to the authors' code.

    python launch/device_check.py [--budget_sec=420] [--ref_dir=DIR --bench_ref=DIR --ref_python=python]
    python launch/device_check.py --smoke          (tiny shapes on the CPU, in seconds: the script's own test)

Parts, in this order, each printed as JSON lines `{"part": ..., ...}` as soon as it is measured:
- `reference`: the authors' PyTorch code through the same shapes (`launch/device_check_ref.py`, in its own
  process and Python, before this process touches the accelerator: JAX would hold most of its memory);
  skipped with one line when --ref_dir or --bench_ref is not there;
- `train_owt`, `train_llada`: the ProSeCo and the MDLM-only train step of `configs/owt_small.py` (DiT-small,
  L = 1024, bf16) and of a LLaDA config of LLADA_SHAPE, each at the largest batch that fits: from --batch
  (--llada_batch) halved after each out-of-memory error; tokens/s, step time, MFU against the chip's bf16
  peak (`peak_mfu`) and against a bf16 matmul measured in the same run (`mfu`), compile time;
- `sample`: the sampler at OWT shapes for each (T, S) of SAMPLE_GRID, the on-device scan against a host loop
  over the same jitted step: samples/s, time per model call, compile time (a run that includes compiling).

A part that fails prints `{"part": ..., "error": ...}` and the next one runs. Time: each part gets a share
of --budget_sec; a batch size or a sampler setting whose cost, estimated from what was measured before it,
exceeds what is left is skipped with a line that says so. The last lines are a table of every figure.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import jax
from absl import flags

from proseco_jax import benchmarking, cli, config_base, sharding
from proseco_jax.config_base import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_SCRIPT = os.path.join(REPO, "launch", "device_check_ref.py")
# LLaDA-8B's architecture (RMSNorm, SwiGLU, rotary, its vocabulary) at about 0.6 B parameters: the benchmark
# holds two train states (fp32 parameters, two AdamW moments: ~10 GB each) besides a step's temporaries,
# whose [B, 1024, 126464] logits and their gradients dominate, on one 80 GB chip.
LLADA_SHAPE = {"model.num_layers": 8, "model.hidden_size": 1536, "model.num_heads": 12,
               "model.num_kv_heads": 12, "model.mlp_hidden_size": 4096, "model.vocab_size": 126464,
               "model.mask_token_id": 126336, "data.vocab_size": 126336, "model.dtype": "bfloat16",
               "model.max_length": 1024, "data.length": 1024}
SAMPLE_GRID = ((128, 0), (128, 2), (1024, 0), (1024, 2))  # (T sampling steps, S corrector steps)
# --smoke: every part at test size, so the test suite runs the whole script.
SMOKE_DIT = {"model.num_layers": 1, "model.hidden_size": 32, "model.num_heads": 2, "model.cond_dim": 16,
             "data.length": 16, "model.max_length": 16, "sampling.batch_size": 2,
             # Byte tokens: GPT-2's 50k-id vocabulary would spend the smoke run's seconds on the softmax.
             "data.tokenizer": "bytes", "data.vocab_size": 259}
SMOKE_LLADA = {"model.num_layers": 1, "model.hidden_size": 32, "model.num_heads": 2, "model.num_kv_heads": 1,
               "model.mlp_hidden_size": 48, "model.dtype": "bfloat16", "data.length": 16,
               "model.max_length": 16}
SMOKE_SAMPLE_GRID = ((4, 0), (4, 2))
# Shares of the budget: the reference, the two train parts, the sampler (what is left over passes on).
SHARES = {"reference": 0.25, "train_owt": 0.2, "train_llada": 0.2, "sample": 0.35}
OOM_WORDS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes on whatever device is there (the CPU in the tests).")
_BUDGET = flags.DEFINE_integer("budget_sec", 420, "Wall time the parts may take together.", lower_bound=1)
# A train step of configs/owt_small.py keeps about 1 GiB per sequence live (the AOT table in
# launch/recipes/README.md): 32 fit an 80 GB chip, 64 a 141 GB one.
_BATCH = flags.DEFINE_integer("batch", 32, "First train batch of configs/owt_small.py to try, for both codes "
                              "(halved on out-of-memory).", lower_bound=1)
_LLADA_BATCH = flags.DEFINE_integer("llada_batch", 8, "First train batch of the LLaDA config to try.",
                                    lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps of each program.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed train steps of each program after compiling.",
                               lower_bound=0)
_REF_DIR = flags.DEFINE_string("ref_dir", "", "The authors' code, extracted (`git archive` of "
                               "kuleshov-group/proseco); '' or absent skips the reference part.")
_BENCH_REF = flags.DEFINE_string("bench_ref", "", "The reference harness (bench_ref.py with its flash-attn "
                                 "shim and import stubs); '' or absent skips the reference part.")
_REF_PYTHON = flags.DEFINE_string("ref_python", sys.executable, "Python that has torch and the reference's "
                                  "imports.")
_OUT = flags.DEFINE_string("out", "", "Also write every JSON line to this file.")
_TABLE_FROM = flags.DEFINE_string("table_from", "", "Only print the table of the JSON lines in this file "
                                  "(what --out wrote, e.g. of a run stopped before its table).")


class Report:
    """Prints each figure as one JSON line (and keeps it for the table); knows the time left."""

    def __init__(self, budget_sec: float, out: str):
        self.lines: list[dict[str, Any]] = []
        self.deadline = time.perf_counter() + budget_sec
        self._out = open(out, "w") if out else None

    def emit(self, part: str, **figures: Any) -> dict[str, Any]:
        line = {"part": part, **figures}
        self.lines.append(line)
        text = json.dumps(line, default=str)
        print(text, flush=True)
        if self._out:
            self._out.write(text + "\n")
            self._out.flush()
        return line

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def load_config(name: str, overrides: dict[str, Any]) -> Config:
    """configs/NAME.py with dotted overrides written in (a batch also sets the sampler's), resolved."""
    config = config_base.from_file(os.path.join(REPO, "configs", f"{name}.py"))
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config_base.resolve(config)


def is_oom(error: Exception) -> bool:
    return any(word in str(error) for word in OOM_WORDS)


def train_part(report: Report, part: str, name: str, shape: dict[str, Any], batch: int, mesh, *, steps: int,
               warmup: int, part_sec: float) -> None:
    """The train step at the largest batch from `batch` down (halving) that fits and fits the time."""
    start = time.perf_counter()
    while batch >= 1:
        spent = time.perf_counter() - start
        if spent > part_sec or report.left() <= 0:
            report.emit(part, skipped=f"no time left for batch {batch} ({spent:.0f} s spent)")
            return
        config = load_config(name, {**shape, "train.batch_size": batch})
        try:
            figures = benchmarking.run("train_step", config, mesh, steps=steps, warmup=warmup)
        except Exception as e:  # noqa: BLE001 -- an out-of-memory error is the signal to halve.
            if not is_oom(e):
                raise
            report.emit(part, batch=batch, oom=str(e).splitlines()[0][:300])
            batch //= 2
            continue
        report.emit(part, config=name, batch=batch, length=config.data.length,
                    layers=config.model.num_layers, hidden=config.model.hidden_size, dtype=config.model.dtype,
                    **figures)
        return
    report.emit(part, error="out of memory at batch 1")


def sample_part(report: Report, shape: dict[str, Any], grid: tuple[tuple[int, int], ...], mesh,
                part_sec: float) -> None:
    """The sampler at each (T, S): one compiling run and one timed run of the scan and of the host loop.
    A setting is skipped when its four runs would take longer than what is left, at the time per model call
    measured so far and T * (1 + S) model calls (the most a run makes)."""
    start, sec_per_call = time.perf_counter(), None
    for steps, corrector_steps in grid:
        left = min(part_sec - (time.perf_counter() - start), report.left())
        estimate = None if sec_per_call is None else 4 * steps * (1 + corrector_steps) * sec_per_call
        if left <= 0 or (estimate is not None and estimate > left):
            report.emit("sample", sampling_steps=steps, corrector_steps=corrector_steps,
                        skipped=f"estimated {estimate or 0:.0f} s, {max(left, 0):.0f} s left")
            continue
        config = load_config("owt_small", {**shape, "sampling.steps": steps,
                                           "sampling.corrector_steps": corrector_steps})
        try:
            figures = benchmarking.run("sample", config, mesh, steps=1, warmup=0)
        except Exception as e:  # noqa: BLE001 -- one setting's failure leaves the others to run.
            report.emit("sample", sampling_steps=steps, corrector_steps=corrector_steps, error=repr(e)[:500])
            continue
        sec_per_call = max(sec_per_call or 0.0, figures["scan_sec_per_model_call"],
                           figures["hostloop_run_sec"] / max(figures["hostloop_model_calls"], 1))
        report.emit("sample", length=config.data.length, **figures)


def reference_part(report: Report, *, smoke: bool, batch: int, part_sec: float) -> None:
    """The authors' code through the same shapes, in its own process; its JSON lines are relayed."""
    missing = [f"--{name}={path!r}" for name, path in (("ref_dir", _REF_DIR.value),
                                                      ("bench_ref", _BENCH_REF.value))
               if not path or not os.path.isdir(path)]
    if missing:
        report.emit("reference", skipped=f"no reference here ({', '.join(missing)}): only our figures")
        return
    command = [_REF_PYTHON.value, REF_SCRIPT, f"--ref_dir={_REF_DIR.value}",
               f"--bench_ref={_BENCH_REF.value}", f"--batch={batch}",
               f"--budget_sec={max(int(part_sec) - 15, 1)}", *(["--smoke"] if smoke else [])]
    records, error = benchmarking.run_reference(command, timeout=part_sec + 30)
    for record in records:
        report.emit(**record)
    if error is not None:
        report.emit("reference", error=error)


def guarded(report: Report, part: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 -- a part that fails must leave the others to run.
        report.emit(part, error=f"{type(e).__name__}: {str(e)[:500]}",
                    where=traceback.format_exc().strip().splitlines()[-3:])


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _ratio(ours: Any, theirs: Any) -> str:
    known = isinstance(ours, float) and isinstance(theirs, float) and theirs
    return f"{ours / theirs:.2f}x" if known else "-"


def table_rows(lines: list[dict[str, Any]]) -> Iterator[str]:
    """A markdown table of every figure line: ours, the reference's where it ran the same thing, and the
    ratio (for a train step: ours tokens/s over theirs; for the sampler: their time per run over ours)."""
    ref_train = {(x["program"]): x for x in lines if x["part"] == "reference_train" and "step_sec" in x}
    ref_sample = {(x["steps"], x["corrector_steps"]): x for x in lines
                  if x["part"] == "reference_sample" and "samples_per_sec" in x}
    yield ("| part | setting | batch | time (s) | tokens/s or samples/s | MFU peak / matmul | "
           "ProSeCo / MDLM time | compile (s) | reference: batch, time (s), rate | ours / reference |")
    yield "|---|---|---|---|---|---|---|---|---|---|"
    for x in lines:
        if x["part"] in ("train_owt", "train_llada") and "proseco_step_sec" in x:
            shape = f"{x['layers']}L d={x['hidden']} L={x['length']} {x.get('dtype', '')}"
            for program in ("proseco", "mdlm"):
                pre = "" if program == "proseco" else "mdlm_"
                ref = ref_train.get(program) if x["part"] == "train_owt" else None
                theirs = "-" if ref is None else (f"{ref['batch']}, {_fmt(ref['step_sec'])}, "
                                                  f"{_fmt(ref['tokens_per_sec'])} tok/s")
                yield (f"| {x['part']} {program} | {shape} | {x['batch']} | "
                       f"{_fmt(x[f'{program}_step_sec'])} | "
                       f"{_fmt(x[f'{program}_tokens_per_sec'])} tok/s | {_fmt(x.get(f'{pre}peak_mfu'), 2)} / "
                       f"{_fmt(x.get(f'{pre}mfu'), 2)} | {_fmt(x['proseco_over_mdlm_time'])} | "
                       f"{_fmt(x[f'{pre}compile_sec'])} | {theirs} | "
                       f"{_ratio(x[f'{program}_tokens_per_sec'], ref and ref['tokens_per_sec'])} |")
        elif x["part"] == "sample" and "scan_run_sec" in x:
            ref = ref_sample.get((x["sampling_steps"], x["corrector_steps"]))
            theirs = "-" if ref is None else (f"{ref['batch']}, {_fmt(ref['run_sec'])}, "
                                              f"{_fmt(ref['samples_per_sec'])} samples/s, "
                                              f"{_fmt(ref['ms_per_nfe'])} ms/NFE")
            setting = (f"L={x['length']} T={x['sampling_steps']} S={x['corrector_steps']}, "
                       f"{x['model_calls']} calls, {_fmt(1e3 * x['scan_sec_per_model_call'])} ms/call")
            for loop in ("scan", "hostloop"):
                yield (f"| sample {loop} | {setting} | {x['sample_batch']} | {_fmt(x[f'{loop}_run_sec'])} | "
                       f"{_fmt(x[f'{loop}_samples_per_sec'])} samples/s | "
                       f"{_fmt(x.get('peak_mfu'), 2)} / {_fmt(x.get('mfu'), 2)} | - | "
                       f"{_fmt(x['compile_sec' if loop == 'scan' else 'hostloop_compile_sec'])} | {theirs} | "
                       f"{_ratio(ref and ref['run_sec'], x[f'{loop}_run_sec'])} |")
        elif "skipped" in x or "error" in x or "oom" in x:
            note = x.get("skipped") or x.get("error") or f"out of memory at batch {x['batch']}"
            note = " ".join(str(note).split()).replace("|", "/")[:200]  # One table row, one cell.
            yield f"| {x['part']} | {note} |  |  |  |  |  |  |  |  |"


def print_table(path: str) -> None:
    try:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        cli.fail(f"--table_from={path!r}: {e}")
    for row in table_rows(lines):
        print(row)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _TABLE_FROM.value:
        print_table(_TABLE_FROM.value)
        return
    smoke = _SMOKE.value
    report = Report(_BUDGET.value, _OUT.value)
    budget = _BUDGET.value
    owt_batch, llada_batch = (4, 4) if smoke else (_BATCH.value, _LLADA_BATCH.value)
    guarded(report, "reference", functools.partial(
        reference_part, report, smoke=smoke, batch=owt_batch, part_sec=SHARES["reference"] * budget))
    device = jax.devices()[0]
    report.emit("device", platform=device.platform, device_kind=device.device_kind,
                devices=jax.device_count(), jax_version=jax.__version__,
                peak_bf16_gflops=(benchmarking.peak_bf16_flops(device.device_kind) or 0) / 1e9 or None)
    mesh = sharding.make_mesh(load_config("owt_small", {}).mesh, [device])
    steps, warmup = (1, 0) if smoke else (_STEPS.value, _WARMUP.value)
    parts = (("train_owt", "owt_small", SMOKE_DIT if smoke else {}, owt_batch),
             ("train_llada", "llada_tiny", SMOKE_LLADA if smoke else LLADA_SHAPE, llada_batch))
    for part, name, shape, batch in parts:
        guarded(report, part, functools.partial(
            train_part, report, part, name, shape, batch, mesh, steps=steps, warmup=warmup,
            part_sec=SHARES[part] * budget))
    guarded(report, "sample", functools.partial(
        sample_part, report, SMOKE_DIT if smoke else {}, SMOKE_SAMPLE_GRID if smoke else SAMPLE_GRID, mesh,
        part_sec=max(report.left(), 0.0)))
    print(f"\ndevice check on {device.device_kind} ({device.platform}), "
          f"{budget - report.left():.0f} s of a {budget} s budget\n")
    for row in table_rows(report.lines):
        print(row)
    sys.stdout.flush()


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
