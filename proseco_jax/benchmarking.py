"""Timing on a shared machine: programs compared side by side in one run, never against stored figures.

`time_programs` compiles each program once (the first call, reported as its compile time), warms each up,
then alternates timed calls between the programs so that a busy spell of the machine slows them alike, and
reports the median of each. `CpuMeter` records how many cores other processes kept busy meanwhile; MFU is a
model's matmul FLOP/s over XLA's matmul rate (in the model's compute dtype) measured in the same run.
Two benchmarks use it: the ProSeCo train step against an MDLM-only step (`bench_train_step`), and the
on-device scan sampler against a Python loop over the same jitted step (`bench_sample`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from proseco_jax import train
from proseco_jax.config_base import Config
from proseco_jax.models import registry
from proseco_jax.sampling import Sampler
from proseco_jax.state import ModelOnMesh

# The reference matmul is square, of this size on a CPU and of the larger on an accelerator, where a 2048
# product ends within a few dispatch latencies and its timing would say more about the host than the chip.
MATMUL_SIZE = 2048
ACCELERATOR_MATMUL_SIZE = 8192
# Dense bf16 peak FLOP/s of the chips seen so far, by a word of `jax.Device.device_kind` (SXM parts).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}


class CpuMeter:
    """Cores kept busy by other processes while timing (from /proc/stat, minus this process's CPU)."""

    def __init__(self):
        self.other_sec = self.wall_sec = 0.0
        self._start = None

    @staticmethod
    def _read() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal (guest time is already in user).
            fields = [float(v) for v in f.readline().split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # Steal counts as busy.
        return busy, time.process_time(), time.perf_counter()

    def __enter__(self):
        try:
            self._start = self._read()
        except (OSError, ValueError, IndexError):
            self._start = None
        return self

    def __exit__(self, *exc):
        if self._start is not None:
            busy, own, wall = (b - a for a, b in zip(self._start, self._read()))
            self.other_sec += max(busy - own, 0.0)
            self.wall_sec += wall

    @property
    def other_cores_busy(self) -> float | None:
        return round(self.other_sec / self.wall_sec, 2) if self.wall_sec > 0 else None


def timed(fn: Callable[..., Any], *args) -> tuple[float, Any]:
    """(seconds, result) of fn(*args), waiting until every array of the result is computed."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


@dataclasses.dataclass
class Timings:
    """What `time_programs` measured, per program name."""

    compile_sec: dict[str, float]
    median_sec: dict[str, float]
    min_sec: dict[str, float]
    outputs: dict[str, Any]  # The last output of each program.
    other_cores_busy: float | None


def time_programs(programs: dict[str, Callable[[Any, int], Any]], state: dict[str, Any], *, steps: int,
                  warmup: int) -> Timings:
    """Times `program(state, i) -> (state, output)` for each named program, alternating between them.

    Call 0 compiles (timed as compile_sec), calls 1..warmup are untimed, the next `steps` are timed.
    """
    compile_sec, outputs = {}, {}
    for name, fn in programs.items():
        compile_sec[name], (state[name], outputs[name]) = timed(fn, state[name], 0)
    for i in range(1, 1 + warmup):
        for name, fn in programs.items():
            state[name], outputs[name] = jax.block_until_ready(fn(state[name], i))
    times: dict[str, list[float]] = {name: [] for name in programs}
    meter = CpuMeter()
    for i in range(1 + warmup, 1 + warmup + steps):
        for name, fn in programs.items():
            with meter:
                sec, (state[name], outputs[name]) = timed(fn, state[name], i)
            times[name].append(sec)
    return Timings(compile_sec, {n: statistics.median(t) for n, t in times.items()},
                   {n: min(t) for n, t in times.items()}, outputs, meter.other_cores_busy)


def matmul_flops_per_sec(runs: int = 5, warmup: int = 2, dtype: Any = jnp.float32,
                         size: int = MATMUL_SIZE) -> float:
    """Best FLOP/s of a jitted (size x size) @ (size x size) over `runs` timed calls, with operands in
    `dtype` and float32 accumulation (how the models multiply in that dtype, `layers.contract`)."""
    a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype)
            for k in jax.random.split(jax.random.key(0), 2))
    dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
    for _ in range(warmup):
        timed(dot, a, b)
    best = min(timed(dot, a, b)[0] for _ in range(runs))
    return 2.0 * size**3 / best


def matmul_size(device: jax.Device) -> int:
    """The reference matmul's size on this device (see ACCELERATOR_MATMUL_SIZE)."""
    return MATMUL_SIZE if device.platform == "cpu" else ACCELERATOR_MATMUL_SIZE


def peak_bf16_flops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak FLOP/s from PEAK_BF16_FLOPS, or None for a chip not listed."""
    return next((peak for word, peak in PEAK_BF16_FLOPS.items() if word in device_kind), None)


def forward_flops(config: Config, batch_size: int) -> float:
    """Matmul FLOPs of one model call on batch_size sequences of data.length tokens (one sampler NFE for the
    batch); the model family counts its own."""
    return batch_size * registry.forward_flops(config.model, config.mask_id + 1, config.data.length)


def train_step_flops(config: Config, passes: int) -> float:
    """Matmul FLOPs of one train step: forward + backward (3x forward) of `passes` backbone passes (2 for
    ProSeCo, 1 for MDLM) over the global batch."""
    return 3.0 * passes * forward_flops(config, config.train.batch_size)


def bench_train_step(config: Config, mesh: jax.sharding.Mesh, *, steps: int, warmup: int) -> dict[str, Any]:
    """ProSeCo (corrector on from step 0) and MDLM-only (corrector off) train steps from the same initial
    state on one fixed random batch (no data pipeline): figures keyed by program."""
    programs_cfg = {
        "proseco": config.replace(corrector=config.corrector.replace(enabled=True, start_step=0)),
        "mdlm": config.replace(corrector=config.corrector.replace(enabled=False)),
    }
    batch, length = config.train.batch_size, config.data.length
    data_key, init_key, step_key = jax.random.split(jax.random.key(config.seed), 3)
    tokens = np.asarray(jax.random.randint(data_key, (batch, length), 0, config.data.vocab_size))
    inputs = train.device_batch({"tokens": tokens}, mesh)
    programs, states, initial = {}, {}, None
    for name, cfg in programs_cfg.items():
        compiled = train.build(cfg, mesh)
        initial = jax.block_until_ready(compiled.init(init_key) if initial is None else initial)
        states[name] = jax.tree.map(jnp.copy, initial)  # A step donates its state: each program its own.
        programs[name] = (lambda step: lambda st, i: step(st, inputs, jax.random.fold_in(step_key, i)))(
            compiled.step)
    del initial
    timings = time_programs(programs, states, steps=steps, warmup=warmup)
    flops = {name: train_step_flops(cfg, 2 if name == "proseco" else 1) for name, cfg in programs_cfg.items()}
    sec = timings.median_sec
    return {
        "proseco_tokens_per_sec": batch * length / sec["proseco"],
        "mdlm_tokens_per_sec": batch * length / sec["mdlm"],
        "proseco_over_mdlm_time": sec["proseco"] / sec["mdlm"],
        "model_gflops_per_sec": flops["proseco"] / sec["proseco"] / 1e9,
        "mdlm_model_gflops_per_sec": flops["mdlm"] / sec["mdlm"] / 1e9,
        "model_gflops_per_step": flops["proseco"] / 1e9,
        "mdlm_model_gflops_per_step": flops["mdlm"] / 1e9,
        "proseco_step_sec": sec["proseco"],
        "mdlm_step_sec": sec["mdlm"],
        "proseco_step_sec_min": timings.min_sec["proseco"],
        "mdlm_step_sec_min": timings.min_sec["mdlm"],
        "compile_sec": timings.compile_sec["proseco"],
        "mdlm_compile_sec": timings.compile_sec["mdlm"],
        "other_cores_busy": timings.other_cores_busy,
    }


def random_params(placed: ModelOnMesh, key: jax.Array, scale: float = 0.05) -> Any:
    """Initial parameters plus Gaussian noise: the zero-initialised adaLN and output layers of a fresh DiT
    would make every prediction uniform, so the corrector would stop after one call and NFE would not be
    that of a trained model."""
    params = placed.init_params(key)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def bench_sample(config: Config, mesh: jax.sharding.Mesh, *, steps: int, warmup: int) -> dict[str, Any]:
    """The on-device scan sampler against a Python loop over the same jitted step, same model (random
    weights), settings (`config.sampling`) and batch; each timed unit is one sampling run."""
    placed = ModelOnMesh.create(config, mesh)
    sampler = Sampler.for_model(placed, random_params(placed, jax.random.key(config.seed)))
    settings = config.sampler_settings
    batch = settings.batch_size
    keys = jax.random.split(jax.random.key(config.seed + 1), 1 + warmup + steps)

    def program(host_loop: bool):
        return lambda _, i: (None, sampler.sample(settings, keys[i], batch, config.data.length,
                                                  host_loop=host_loop))

    timings = time_programs({"scan": program(False), "hostloop": program(True)},
                            {"scan": None, "hostloop": None}, steps=steps, warmup=warmup)
    out, sec = timings.outputs["scan"], timings.median_sec
    calls = int(out.model_calls)
    forward = forward_flops(config, batch)
    return {
        "scan_samples_per_sec": batch / sec["scan"],
        "hostloop_samples_per_sec": batch / sec["hostloop"],
        "scan_over_hostloop": sec["hostloop"] / sec["scan"],
        "compile_sec": timings.compile_sec["scan"],
        "hostloop_compile_sec": timings.compile_sec["hostloop"],
        "scan_run_sec": sec["scan"],
        "hostloop_run_sec": sec["hostloop"],
        "nfe": float(np.mean(np.asarray(out.nfe))),
        "predictor_nfe": float(np.mean(np.asarray(out.predictor_nfe))),
        "corrector_nfe": float(np.mean(np.asarray(out.corrector_nfe))),
        "model_calls": calls,
        "hostloop_model_calls": int(timings.outputs["hostloop"].model_calls),
        "scan_sec_per_model_call": sec["scan"] / max(calls, 1),
        "model_gflops_per_sec": forward * calls / sec["scan"] / 1e9,
        "sampler": settings.sampler,
        "sampling_steps": settings.steps,
        "corrector_steps": settings.num_corrector_steps,
        "corrector_every": settings.corrector_every,
        "sample_batch": batch,
        "other_cores_busy": timings.other_cores_busy,
    }


BENCHMARKS = {"train_step": bench_train_step, "sample": bench_sample}


def run_reference(command: list[str],
                  timeout: float | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Runs the reference's timing script (`launch/device_check_ref.py`, in its own process and Python):
    (its JSON lines, parsed; None, or why it failed: its exit code and last stderr line, or the timeout)."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        result = subprocess.CompletedProcess(command, -1, stdout, f"timed out after {timeout:.0f} s")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode == 0:
        return records, None
    last = ([line for line in result.stderr.splitlines() if line.strip()] or [""])[-1]
    return records, f"exit code {result.returncode}: {last[-500:]}"


def vs_reference_rows(shape: str, precision: str, ours: dict[str, Any],
                      theirs: dict[str, float]) -> list[dict[str, Any]]:
    """One row per train step (ProSeCo, MDLM) of our `train_step` figures beside the reference's tokens/s
    (`theirs`, keyed by step; a step it lacks has None), with ours over theirs and our MFU."""
    rows = []
    for step in ("proseco", "mdlm"):
        mine, other = ours[f"{step}_tokens_per_sec"], theirs.get(step)
        rows.append({"shape": shape, "precision": precision, "step": step, "ours_tokens_per_sec": mine,
                     "theirs_tokens_per_sec": other,
                     "ours_over_theirs": None if other is None else mine / other,
                     "mfu": ours["mfu" if step == "proseco" else "mdlm_mfu"]})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `vs_reference_rows` as a markdown table."""
    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = ["| shape | precision | step | ours tok/s | theirs tok/s | ours / theirs | our MFU |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['precision']} | {'ProSeCo' if r['step'] == 'proseco' else 'MDLM'} | "
              f"{number(r['ours_tokens_per_sec'], ',.0f')} | {number(r['theirs_tokens_per_sec'], ',.0f')} | "
              f"{number(r['ours_over_theirs'], '.2f')}{'' if r['ours_over_theirs'] is None else 'x'} | "
              f"{number(r['mfu'], '.2f')} |" for r in rows]
    return "\n".join(lines)


def run(what: str, config: Config, mesh: jax.sharding.Mesh, *, steps: int, warmup: int) -> dict[str, Any]:
    """One benchmark with the machine's matmul rate measured before and after it, and MFU figures: `mfu`
    against that rate, `peak_mfu` against the chip's bf16 peak (bf16 models on a chip in PEAK_BF16_FLOPS)."""
    dtype = jnp.dtype(getattr(config.model, "dtype", "float32"))  # MFU against the model's matmul dtype.
    device = mesh.devices.flat[0]
    size = matmul_size(device)
    matmul_before = matmul_flops_per_sec(dtype=dtype, size=size)
    figures = BENCHMARKS[what](config, mesh, steps=steps, warmup=warmup)
    # The best of both measurements is the machine's rate; a busy spell only lowers it.
    matmul_gflops = max(matmul_before, matmul_flops_per_sec(dtype=dtype, size=size)) / 1e9
    rates = {key.removesuffix("model_gflops_per_sec"): value
             for key, value in figures.items() if key.endswith("model_gflops_per_sec")}
    mfu = {prefix + "mfu": value / matmul_gflops for prefix, value in rates.items()}
    peak = peak_bf16_flops(device.device_kind) if dtype == jnp.bfloat16 else None
    if peak is not None:
        mfu.update({prefix + "peak_mfu": value * 1e9 / mesh.devices.size / peak
                    for prefix, value in rates.items()})
    return {"what": what, **figures, **mfu, "matmul_gflops": matmul_gflops, "matmul_dtype": dtype.name,
            "matmul_size": size, "devices": mesh.devices.size, "device_kind": device.device_kind,
            "peak_bf16_gflops": None if peak is None else peak / 1e9,
            "mesh": dict(mesh.shape), "platform": device.platform, "jax_version": jax.__version__,
            "load_avg_1min": os.getloadavg()[0]}

