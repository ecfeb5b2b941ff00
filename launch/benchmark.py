"""Times the ProSeCo train step against an MDLM-only step, or the on-device sampler against a host loop.

    python launch/benchmark.py --what=train_step --config=configs/synthetic.py [--shape=tiny|large|config]
        [--layers=N --hidden=D --heads=H --length=L --batch=B --vocab=V] [--steps=K --warmup=W]
        [--devices=1 --threads=0] [--config.FIELD=VALUE ...]

Both steps run on one fixed random batch (no data pipeline), on a 1-device mesh unless --devices says
otherwise; each is compiled apart (the first call, timed as `*_compile_sec`), warmed up, then the timed
steps alternate between the two programs so that both see the same machine load, and the median step time
of each is reported. `mfu` is the model's matmul FLOP/s as a fraction of XLA's dense fp32 matmul rate
measured in the same run (`matmul_gflops`). The last line of stdout is one JSON object with every figure.

    python launch/benchmark.py --what=sample --config=configs/synthetic.py --shape=tiny \
        --config.sampling.steps=64 --config.sampling.corrector_steps=2 [--steps=3 --warmup=1]

times whole sampling runs (`sampling.batch_size` sequences each; --steps timed runs) of the compiled
`lax.scan` sampler and of a host-driven loop calling the same jitted model once per step, with the same
settings; the model has random (not zero-initialised) weights so that the corrector works as on a trained
model. Keys: `scan_samples_per_sec`, `hostloop_samples_per_sec`, `scan_over_hostloop`, `compile_sec`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, schedules, sharding, train
from proseco_jax.models.dit import DiTConfig
from proseco_jax.sampling import hostloop
from proseco_jax.sampling import loop as sampling_loop
from proseco_jax.sampling import settings as sampler_settings

# Shapes of the reference measurements (DESIGN.md section 6) and what the reference reached on them.
SHAPE_KEYS = ("layers", "hidden", "heads", "cond_dim", "length", "batch", "vocab")
SHAPES = {
    "tiny": dict(zip(SHAPE_KEYS, (4, 256, 4, 128, 128, 32, 64))),
    "large": dict(zip(SHAPE_KEYS, (8, 512, 8, 128, 256, 16, 64))),
}
REFERENCE = {
    "tiny": {"tokens_per_sec": 1424.0, "proseco_step_sec": 2.876, "mdlm_step_sec": 1.559},
    "large": {"tokens_per_sec": 246.0, "proseco_step_sec": 16.63, "mdlm_step_sec": 8.37},
}
# Sampling with the reference (batch 32 at tiny, 16 at large; omega = 1): (shape, T, S) -> figures.
SAMPLE_REFERENCE = {
    ("tiny", 64, 0): {"samples_per_sec": 1.006, "nfe": 64, "sec_per_nfe": 0.497},
    ("tiny", 64, 2): {"samples_per_sec": 0.382, "nfe": 192, "sec_per_nfe": 0.436},
    ("large", 32, 0): {"samples_per_sec": 0.186, "nfe": 32, "sec_per_nfe": 2.682},
    ("large", 32, 2): {"samples_per_sec": 0.062, "nfe": 96, "sec_per_nfe": 2.706},
}
MATMUL_SIZE = 2048

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WHAT = flags.DEFINE_enum("what", "train_step", ["train_step", "sample"], "What to time.")
_SHAPE = flags.DEFINE_enum("shape", "config", ["config", *SHAPES],
                           "Shape preset: 'config' keeps the config's shapes; tiny and large are the "
                           "reference's (they set cond_dim 128 and vocab 64 too).")
_LAYERS = flags.DEFINE_integer("layers", None, "model.num_layers.", lower_bound=1)
_HIDDEN = flags.DEFINE_integer("hidden", None, "model.hidden_size.", lower_bound=1)
_HEADS = flags.DEFINE_integer("heads", None, "model.num_heads.", lower_bound=1)
_LENGTH = flags.DEFINE_integer("length", None, "data.length and model.max_length.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", None, "train.batch_size (global).", lower_bound=1)
_VOCAB = flags.DEFINE_integer("vocab", None, "data.vocab_size (real tokens; [MASK] is added).",
                              lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps of each program.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps of each program after compiling.", lower_bound=0)
_DEVICES = flags.DEFINE_integer("devices", 1, "Mesh over the first N devices (0: all of them); the "
                                "config's mesh sizes must fit N.", lower_bound=0)
_THREADS = flags.DEFINE_integer("threads", 0, "Run on N CPU cores (XLA sizes its CPU thread pool by the "
                                "cores it may use); 0 keeps all of them.", lower_bound=0)


@dataclasses.dataclass(frozen=True)
class Context:
    """What every benchmark gets: the config with its shapes set, the mesh and the timing settings."""

    config: Any
    mesh: jax.sharding.Mesh
    steps: int
    warmup: int


@dataclasses.dataclass(frozen=True)
class Report:
    """A benchmark's table (human-readable lines) and figures (for the JSON line).

    Each figure named PREFIXmodel_gflops_per_sec gets a sibling PREFIXmfu: that rate over the matmul rate.
    """

    table: str
    figures: dict[str, Any]


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


def matmul_flops_per_sec(runs: int = 5, warmup: int = 2) -> float:
    """Best FLOP/s of a jitted fp32 (2048 x 2048) @ (2048 x 2048) over `runs` timed calls."""
    a, b = (jax.random.normal(k, (MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
            for k in jax.random.split(jax.random.key(0), 2))
    dot = jax.jit(jnp.dot)
    for _ in range(warmup):
        timed(dot, a, b)
    best = min(timed(dot, a, b)[0] for _ in range(runs))
    return 2.0 * MATMUL_SIZE**3 / best


def train_step_flops(config, passes: int) -> float:
    """Matmul FLOPs of one train step: `passes` backbone passes (2 for ProSeCo, 1 for MDLM) of B x L tokens.

    With d = hidden, r = mlp_ratio, c = cond_dim, V = padded vocabulary, L = length, N = layers, B = batch:
        per token, forward:    N * [2 * (4 d^2 + 2 r d^2)   (q, k, v, out; MLP in and out)
                                    + 2 * 2 * L * d]        (scores q k^T and the weighted sum of v)
                               + 2 * d * V                  (output layer)
        per sequence, forward: N * 2 * c * 6 d + 2 * c * 2 d (adaLN of the blocks and of the final layer)
                               + 2 * (256 c + c^2)          (time embedding MLP)
        step = 3 (forward + backward) * passes * B * (L * per token + per sequence).
    The embedding lookup, norms, softmax and optimizer are not matmuls and are not counted.
    """
    cfg = DiTConfig.from_config(config)
    d, r, c, n = cfg.hidden_size, cfg.mlp_ratio, cfg.cond_dim, cfg.num_layers
    length, batch, vocab = config.data.length, config.train.batch_size, cfg.padded_vocab_size
    per_token = n * (2 * (4 * d * d + 2 * r * d * d) + 2 * 2 * length * d) + 2 * d * vocab
    per_sequence = n * 2 * c * 6 * d + 2 * c * 2 * d + 2 * (256 * c + c * c)
    return 3.0 * passes * batch * (length * per_token + per_sequence)


def bench_train_step(ctx: Context) -> Report:
    """ProSeCo (corrector on) and MDLM-only (corrector off) train steps on one fixed random batch."""
    config = ctx.config
    programs = {"proseco": config.copy_and_resolve_references(), "mdlm": config.copy_and_resolve_references()}
    programs["proseco"].corrector.enabled = True
    programs["proseco"].corrector.start_step = 0  # Both passes from the first step on.
    programs["mdlm"].corrector.enabled = False
    batch, length = config.train.batch_size, config.data.length
    data_key, init_key, step_key = jax.random.split(jax.random.key(config.seed), 3)
    tokens = jax.device_put(jax.random.randint(data_key, (batch, length), 0, config.data.vocab_size),
                            sharding.batch_sharding(ctx.mesh))
    keys = list(jax.random.split(step_key, 1 + ctx.warmup + ctx.steps))

    steps, states, compile_sec = {}, {}, {}
    initial = None  # Both programs train the same model from the same initial state.
    for name, cfg in programs.items():
        compiled = train.build(cfg, ctx.mesh)
        steps[name] = compiled.step
        initial = jax.block_until_ready(compiled.init(init_key) if initial is None else initial)
        state = jax.tree.map(jnp.copy, initial)  # A step donates its state: each program gets its own.
        compile_sec[name], (states[name], _) = timed(compiled.step, state, tokens, keys[0])
    del initial
    for i in range(ctx.warmup):
        for name in programs:
            states[name], _ = jax.block_until_ready(steps[name](states[name], tokens, keys[1 + i]))

    times = {name: [] for name in programs}
    meter = CpuMeter()
    for i in range(ctx.steps):
        for name in programs:  # Alternating, so that a busy spell slows both programs alike.
            with meter:
                sec, (states[name], _) = timed(steps[name], states[name], tokens, keys[1 + ctx.warmup + i])
            times[name].append(sec)

    step_sec = {name: statistics.median(t) for name, t in times.items()}
    flops = {name: train_step_flops(programs[name], passes) for name, passes in (("proseco", 2), ("mdlm", 1))}
    tokens_per_sec = {name: batch * length / step_sec[name] for name in programs}
    shape = shape_name(config)
    reference = REFERENCE.get(shape) if shape else None
    figures = {
        "proseco_tokens_per_sec": tokens_per_sec["proseco"],
        "mdlm_tokens_per_sec": tokens_per_sec["mdlm"],
        "proseco_over_mdlm_time": step_sec["proseco"] / step_sec["mdlm"],
        "model_gflops_per_sec": flops["proseco"] / step_sec["proseco"] / 1e9,
        "mdlm_model_gflops_per_sec": flops["mdlm"] / step_sec["mdlm"] / 1e9,
        "model_gflops_per_step": flops["proseco"] / 1e9,
        "mdlm_model_gflops_per_step": flops["mdlm"] / 1e9,
        "proseco_step_sec": step_sec["proseco"],
        "mdlm_step_sec": step_sec["mdlm"],
        "proseco_step_sec_min": min(times["proseco"]),
        "mdlm_step_sec_min": min(times["mdlm"]),
        "compile_sec": compile_sec["proseco"],
        "mdlm_compile_sec": compile_sec["mdlm"],
        "other_cores_busy": meter.other_cores_busy,
        "reference_shape": shape,
        "reference_tokens_per_sec": reference["tokens_per_sec"] if reference else None,
        "reference_proseco_over_mdlm_time": (
            reference["proseco_step_sec"] / reference["mdlm_step_sec"] if reference else None),
        "speedup_vs_reference": (
            tokens_per_sec["proseco"] / reference["tokens_per_sec"] if reference else None),
    }
    rows = [("program", "step s (median)", "tokens/s", "compile s", "GFLOP/step", "GFLOP/s")]
    for name in programs:
        rows.append((name, f"{step_sec[name]:.4f}", f"{tokens_per_sec[name]:.0f}", f"{compile_sec[name]:.2f}",
                     f"{flops[name] / 1e9:.2f}", f"{flops[name] / step_sec[name] / 1e9:.1f}"))
    if reference:
        rows.append((f"reference ({shape})", f"{reference['proseco_step_sec']:.4f}",
                     f"{reference['tokens_per_sec']:.0f}", "", "", ""))
    lines = format_rows(rows)
    lines.append(f"ProSeCo / MDLM step time: {figures['proseco_over_mdlm_time']:.3f}"
                 + (f" (reference {figures['reference_proseco_over_mdlm_time']:.2f}); ProSeCo speed-up over "
                    f"the reference: {figures['speedup_vs_reference']:.2f}x" if reference else ""))
    return Report(table="\n".join(lines), figures=figures)


def _random_params(compiled: train.Compiled, key: jax.Array, scale: float = 0.05):
    """Initial parameters plus Gaussian noise: the zero-initialised adaLN and output layers of a fresh DiT
    would make every prediction uniform, so the corrector would stop after one call and NFE would not be
    that of a trained model."""
    params = compiled.init(key).params
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def bench_sample(ctx: Context) -> Report:
    """The on-device scan sampler against a host-driven loop (one jitted model call per step from Python),
    same model, settings (`config.sampling`: T, S, omega, rule) and batch; each timed unit is one full
    sampling run of `sampling.batch_size` sequences."""
    config = ctx.config
    compiled = train.build(config, ctx.mesh)
    params = _random_params(compiled, jax.random.key(config.seed))
    settings = sampler_settings.settings_from_config(
        config.sampling, parameterization=config.diffusion.parameterization)
    schedule = schedules.from_config(config.diffusion)
    batch = config.sampling.batch_size
    model = compiled.model

    def apply_fn(p, tokens, sigma):
        return model.apply({"params": p}, tokens, sigma, train=False)

    kwargs = dict(batch_size=batch, length=config.data.length, mask_id=config.data.vocab_size, params=params)

    def run_scan(key):
        with sharding.mesh_context(ctx.mesh, compiled.rules):
            return sampling_loop.sample_sharded(apply_fn, settings, schedule, key, mesh=ctx.mesh, **kwargs)

    def run_host(key):
        with sharding.mesh_context(ctx.mesh, compiled.rules):
            return hostloop.sample_hostloop(apply_fn, settings, schedule, key, **kwargs)

    programs = {"scan": run_scan, "hostloop": run_host}
    keys = jax.random.split(jax.random.key(config.seed + 1), 1 + ctx.warmup + ctx.steps)
    compile_sec, outputs = {}, {}
    for name, fn in programs.items():
        compile_sec[name], outputs[name] = timed(fn, keys[0])
        for i in range(ctx.warmup):
            timed(fn, keys[1 + i])
    times = {name: [] for name in programs}
    meter = CpuMeter()
    for i in range(ctx.steps):
        for name, fn in programs.items():
            with meter:
                sec, outputs[name] = timed(fn, keys[1 + ctx.warmup + i])
            times[name].append(sec)

    run_sec = {name: statistics.median(t) for name, t in times.items()}
    out = outputs["scan"]
    nfe = float(np.mean(np.asarray(out.nfe)))
    calls = int(out.model_calls)
    forward = config.copy_and_resolve_references()
    forward.train.batch_size = batch
    flops_per_call = train_step_flops(forward, passes=1) / 3.0  # Forward only.
    samples_per_sec = {name: batch / run_sec[name] for name in programs}
    ref = SAMPLE_REFERENCE.get((shape_name(config), settings.steps, settings.corrector_steps))
    if settings.corrector_every != 1 or settings.sampler not in ("proseco", "mdlm"):
        ref = None
    figures = {
        "scan_samples_per_sec": samples_per_sec["scan"],
        "hostloop_samples_per_sec": samples_per_sec["hostloop"],
        "scan_over_hostloop": run_sec["hostloop"] / run_sec["scan"],
        "compile_sec": compile_sec["scan"],
        "hostloop_compile_sec": compile_sec["hostloop"],
        "scan_run_sec": run_sec["scan"],
        "hostloop_run_sec": run_sec["hostloop"],
        "nfe": nfe,
        "predictor_nfe": float(np.mean(np.asarray(out.predictor_nfe))),
        "corrector_nfe": float(np.mean(np.asarray(out.corrector_nfe))),
        "model_calls": calls,
        "scan_sec_per_model_call": run_sec["scan"] / max(calls, 1),
        "model_gflops_per_sec": flops_per_call * calls / run_sec["scan"] / 1e9,
        "sampler": settings.sampler,
        "sampling_steps": settings.steps,
        "corrector_steps": settings.corrector_steps,
        "corrector_every": settings.corrector_every,
        "sample_batch": batch,
        "other_cores_busy": meter.other_cores_busy,
        "reference_samples_per_sec": ref["samples_per_sec"] if ref else None,
        "reference_nfe": ref["nfe"] if ref else None,
        # Samples/s this sampler would reach at the reference's NFE (our time per call x its calls).
        "scan_samples_per_sec_at_reference_nfe": (
            batch / (ref["nfe"] * run_sec["scan"] / max(calls, 1)) if ref else None),
        "speedup_vs_reference_at_equal_nfe": (
            ref["sec_per_nfe"] / (run_sec["scan"] / max(calls, 1)) if ref else None),
        "speedup_vs_reference": samples_per_sec["scan"] / ref["samples_per_sec"] if ref else None,
    }
    rows = [("loop", "run s (median)", "samples/s", "compile s", "model calls", "mean NFE")]
    for name in programs:
        o = outputs[name]
        rows.append((name, f"{run_sec[name]:.3f}", f"{samples_per_sec[name]:.2f}", f"{compile_sec[name]:.2f}",
                     f"{int(o.model_calls)}", f"{float(np.mean(np.asarray(o.nfe))):.1f}"))
    if ref:
        rows.append((f"reference ({shape_name(config)})", f"{batch / ref['samples_per_sec']:.3f}",
                     f"{ref['samples_per_sec']:.2f}", "", f"{ref['nfe']}", f"{ref['nfe']}"))
    lines = format_rows(rows)
    lines.append(f"scan over host loop: {figures['scan_over_hostloop']:.2f}x; "
                 f"{figures['scan_sec_per_model_call'] * 1e3:.1f} ms per batched model call")
    return Report(table="\n".join(lines), figures=figures)


BENCHMARKS: dict[str, Callable[[Context], Report]] = {"train_step": bench_train_step, "sample": bench_sample}


def format_rows(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                      enumerate(zip(row, widths))).rstrip() for row in rows]


def shapes_of(config) -> dict[str, int]:
    m = config.model
    return {"layers": m.num_layers, "hidden": m.hidden_size, "heads": m.num_heads, "cond_dim": m.cond_dim,
            "length": config.data.length, "batch": config.train.batch_size, "vocab": config.data.vocab_size}


def shape_name(config) -> str | None:
    """'tiny' or 'large' when the config has exactly that reference shape, else None."""
    shapes = shapes_of(config)
    return next((name for name, preset in SHAPES.items() if preset == shapes), None)


def apply_shapes(config) -> Any:
    """A copy of config with the --shape preset, then the single shape flags, written into it."""
    try:
        config = config.copy_and_resolve_references()
    except OSError as e:  # A config file that failed to load only raises when first read.
        cli.fail(f"cannot load config: {e}")
    shapes = dict(SHAPES.get(_SHAPE.value, {}))
    for key, holder in (("layers", _LAYERS), ("hidden", _HIDDEN), ("heads", _HEADS), ("length", _LENGTH),
                        ("batch", _BATCH), ("vocab", _VOCAB)):
        if holder.value is not None:
            shapes[key] = holder.value
    fields = {"layers": ("model", "num_layers"), "hidden": ("model", "hidden_size"),
              "heads": ("model", "num_heads"), "cond_dim": ("model", "cond_dim"),
              "batch": ("train", "batch_size"), "vocab": ("data", "vocab_size")}
    for key, value in shapes.items():
        if key == "length":
            config.data.length = config.model.max_length = value
        elif key == "batch":
            config.train.batch_size = config.sampling.batch_size = value
        else:
            section, field = fields[key]
            config[section][field] = value
    return config


def pin_threads(threads: int) -> int:
    """Restricts this process to `threads` cores (0: all it may use); returns the number it runs on.

    Must run before jax starts its backend: the CPU thread pool is sized then.
    """
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        cli.fail(f"--threads={threads} but only {len(cores)} cores are available")
    if threads:
        os.sched_setaffinity(0, cores[:threads])
    return threads or len(cores)


def make_mesh(config, num_devices: int) -> jax.sharding.Mesh:
    devices = jax.devices()
    if num_devices > len(devices):
        cli.fail(f"--devices={num_devices}, but {len(devices)} are available")
    return sharding.make_mesh(config.mesh, devices[:num_devices] if num_devices else devices)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    benchmark = BENCHMARKS.get(_WHAT.value)
    if benchmark is None:
        cli.fail(f"--what={_WHAT.value} is not available yet")
    config = apply_shapes(cli.config_or_fail(_CONFIG))
    threads = pin_threads(_THREADS.value)
    mesh = make_mesh(config, _DEVICES.value)
    train.check_config(config, mesh)

    ctx = Context(config=config, mesh=mesh, steps=_STEPS.value, warmup=_WARMUP.value)
    matmul_before = matmul_flops_per_sec()
    report = benchmark(ctx)
    # Measured on both sides of the benchmark; the best is the machine's rate, a busy spell only lowers it.
    matmul_gflops = max(matmul_before, matmul_flops_per_sec()) / 1e9
    mfu = {key.removesuffix("model_gflops_per_sec") + "mfu": value / matmul_gflops
           for key, value in report.figures.items() if key.endswith("model_gflops_per_sec")}

    figures = {
        "what": _WHAT.value,
        **report.figures,
        **mfu,
        "matmul_gflops": matmul_gflops,
        **shapes_of(config),
        "mlp_ratio": config.model.mlp_ratio,
        "dtype": config.model.dtype,
        "steps": ctx.steps,
        "warmup": ctx.warmup,
        "devices": mesh.devices.size,
        "mesh": dict(mesh.shape),
        "threads": threads,
        "platform": jax.devices()[0].platform,
        "jax_version": jax.__version__,
        "load_avg_1min": os.getloadavg()[0],
    }
    shapes = shapes_of(config)
    print(f"{_WHAT.value}: " + ", ".join(f"{k}={v}" for k, v in shapes.items())
          + f" | mesh {dict(mesh.shape)} | {threads} threads | {ctx.steps} timed steps after {ctx.warmup} "
          f"warm-up")
    print(report.table)
    busy = figures.get("other_cores_busy")
    print(f"XLA fp32 matmul {MATMUL_SIZE}^2: {matmul_gflops:.1f} GFLOP/s | "
          + ", ".join(f"{k} {v:.3f}" for k, v in mfu.items())
          + (f" | other processes kept {busy:.2f} cores busy while timing" if busy is not None else ""))
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}), flush=True)


if __name__ == "__main__":
    cli.run(main)
