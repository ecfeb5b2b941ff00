"""Ahead-of-time compilation for a target that is not attached: proves that a config runs on a pod slice
(it shards, compiles and fits the chips' HBM) from a CPU machine, before any TPU is rented.

A target is a TPU topology that libtpu describes without a TPU ("v5e:2x4", "v4:2x2x4", "v5p:4x4x4": its
compile-only devices) or `cpu:N`, the first N local CPU devices. The train step (or the sampler) is built
exactly as training builds it (`train.build`), lowered with abstract arguments that carry the config's
shapes and shardings, and compiled for the target's devices. Per device, XLA's memory analysis gives
arguments + outputs - donated (aliased) + temporaries + generated code; its cost analysis gives the FLOPs
per step as compiled (loop bodies counted once: micro-batches, sampler steps), and the model's matmul
count at 40% / 60% of the chips' peak bf16 rate gives the step time to expect. A program whose
temporaries exceed the chip's HBM does not compile ("RESOURCE_EXHAUSTED"): it is reported, not raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import jax
from jax.sharding import Mesh

from proseco_jax import config_base, sharding, train
from proseco_jax.benchmarking import forward_flops, train_step_flops
from proseco_jax.config_base import Config
from proseco_jax.errors import UsageError
from proseco_jax.sampling import Sampler
from proseco_jax.state import ModelOnMesh

GIB = 2**30
UTILISATIONS = (0.4, 0.6)
PROGRAMS = ("train_step", "sample")


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # per chip
    peak_bf16_flops: float  # per chip, dense bf16 matmuls


# Per-chip HBM capacity and peak bf16 FLOP/s from Google Cloud's TPU documentation (the "TPU v4", "TPU v5e",
# "TPU v5p" and "Trillium (v6e)" pages of cloud.google.com/tpu/docs, system architecture tables).
CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12),
    "v5e": Chip("v5e", 16 * GIB, 197e12),
    "v5p": Chip("v5p", 95 * GIB, 459e12),
    "v6e": Chip("v6e", 32 * GIB, 918e12),
}
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
                "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
# v4 and v5p chips hold two TensorCores that JAX drives as one device ("megacore"), as on a real slice.
MEGACORE = ("v4", "v5p")
TOPOLOGY = re.compile(r"[a-z][a-z0-9]*:\d+(x\d+)*")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a program is compiled for: its name, devices and chip (None on CPU)."""

    name: str
    devices: tuple[jax.Device, ...]
    chip: Chip | None

    @property
    def platform(self) -> str:
        return self.devices[0].platform


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silences the C++ stderr while libtpu starts: off a TPU VM it logs that it finds no VM metadata (worker
    hostnames, accelerator type), which a compile-only topology does not need."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _no_cache_writes() -> Iterator[None]:
    """A compile-only executable cannot be loaded back from jax's persistent compilation cache (it has no
    client), so none is written there."""
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", math.inf)
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def libtpu_available() -> bool:
    """Whether jax can load libtpu: the pip package, or a library that TPU_LIBRARY_PATH names."""
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None or bool(os.environ.get("TPU_LIBRARY_PATH"))


def target(name: str) -> Target:
    """The devices of `name`: 'cpu:N' or a TPU topology such as 'v5e:2x4' (UsageError if it is neither)."""
    if name.startswith("cpu:"):
        count = name.removeprefix("cpu:")
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--topology={name}: expected cpu:N with N >= 1")
        devices = jax.devices("cpu")
        if int(count) > len(devices):
            raise UsageError(f"--topology={name} needs {count} CPU devices but {len(devices)} exist (set "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={count})")
        return Target(name, tuple(devices[: int(count)]), None)
    if not TOPOLOGY.fullmatch(name):
        raise UsageError(f"--topology={name}: expected cpu:N or a TPU topology such as v5e:2x4 or v4:2x2x4")
    if not libtpu_available():
        raise UsageError(f"--topology={name} needs libtpu (pip install -e '.[tpu]')")
    from jax.experimental import topologies

    chip_config = "megacore" if name.split(":")[0] in MEGACORE else "default"
    # libtpu takes a machine-wide lock when it loads; compiling only touches no chip, so several processes
    # (a test run and the binary it starts, or a training job on this TPU VM) may load it at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with _quiet_native_stderr():
            devices = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                                   chip_config_name=chip_config).devices
    except (jax.errors.JaxRuntimeError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--topology={name} is not a TPU topology libtpu knows: {reason}") from None
    kind = DEVICE_KINDS.get(devices[0].device_kind)
    return Target(name, tuple(devices), CHIPS.get(kind))


@dataclasses.dataclass(frozen=True)
class Report:
    """What compiling one program for a target showed; memory figures are per device, FLOPs per step."""

    program: str
    target: str
    platform: str
    chip: str | None
    devices: int
    mesh: dict[str, int]
    batch_size: int
    length: int
    state_bytes: int  # parameters (and optimizer state) alone, from their shardings
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    generated_code_bytes: int | None = None
    hbm_bytes: int | None = None  # the chip's (on a CPU: the host's memory / N); None for an unknown chip
    # All devices: XLA's cost analysis of the partitioned program x devices. It counts a loop body once, so
    # it is the step's FLOPs only without micro-batches (and never the sampler's whole run).
    xla_flops: float | None = None
    model_flops: float = 0.0  # all devices, the whole step: our matmul count (`registry.forward_flops`)
    peak_flops: float | None = None  # all chips of the target, bf16
    error: str | None = None  # why it did not compile for lack of memory
    lower_seconds: float | None = None  # tracing and lowering on this host
    compile_seconds: float | None = None  # XLA's compile on this host (no persistent cache in the binary)

    @property
    def total_bytes(self) -> int | None:
        """Peak per device: live arguments and outputs (donated ones once), temporaries and code."""
        if self.argument_bytes is None:
            return None
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.generated_code_bytes)

    @property
    def fits(self) -> bool | None:
        """False when XLA refused the program or it needs more than the chip's HBM; None: no HBM to check."""
        if self.error is not None:
            return False
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    @property
    def exit_code(self) -> int:
        return 1 if self.fits is False else 0

    def step_seconds(self) -> dict[str, float]:
        """Time per step (per sampling run) at each utilisation of the chips' peak, from the model FLOPs."""
        if not self.peak_flops or not self.model_flops:
            return {}
        return {f"{round(u * 100)}%": self.model_flops / (u * self.peak_flops) for u in UTILISATIONS}

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(total_bytes=self.total_bytes, fits=self.fits,
                   step_sec={k: round(v, 6) for k, v in self.step_seconds().items()})
        return out


def _mesh(config: Config, tgt: Target, program: str) -> Mesh:
    """The config's mesh over the target's devices, checked against the program's shapes."""
    mesh = sharding.make_mesh(config.mesh, tgt.devices)
    t = config.train.replace(eval_every=0)  # Validation data is not part of the program.
    if program == "sample":  # Only the tensor axis is checked here; make_plan checks the sampling batch.
        t = t.replace(batch_size=sharding.data_parallel_size(mesh), micro_batches=1)
    train.check_mesh(config.replace(train=t), mesh)
    return mesh


def _abstract_key(mesh: Mesh) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))


def _per_device_bytes(tree: Any) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def lower_train_step(config: Config, mesh: Mesh) -> tuple[jax.stages.Lowered, Any]:
    """(the train step lowered for the config's batch on `mesh`, its abstract train state)."""
    built = train.build(config, mesh)
    return built.lower(config.train.batch_size, config.data.length), built.abstract_state


def lower_sampler(config: Config, mesh: Mesh) -> tuple[jax.stages.Lowered, Any]:
    """(the sampler of `config.sampling` lowered on `mesh`, the abstract parameters it reads)."""
    placed = ModelOnMesh.create(config, mesh)
    sampler = Sampler.for_model(placed, placed.abstract_params())
    settings = config.sampler_settings
    lowered = sampler.lower(settings, _abstract_key(mesh), settings.batch_size, config.data.length)
    return lowered, sampler.params


def compile_for(config: Any, tgt: Target, program: str = "train_step") -> Report:
    """Compiles `program` ('train_step' or 'sample') of `config` for `tgt` and reports what it needs."""
    config = config_base.resolve(config)
    if program not in PROGRAMS:
        raise UsageError(f"program {program!r} is not one of {PROGRAMS}")
    start = time.perf_counter()
    if program == "train_step":
        batch = config.train.batch_size
        mesh = _mesh(config, tgt, program)
        lowered, state = lower_train_step(config, mesh)
        model_flops = train_step_flops(config, 2 if config.corrector.enabled else 1)
    else:
        settings = config.sampler_settings
        batch = settings.batch_size
        mesh = _mesh(config, tgt, program)
        lowered, state = lower_sampler(config, mesh)
        # Every model call of the run, at most T + S ceil(T / omega) of them, on the whole batch.
        model_flops = forward_flops(config, batch) * settings.max_nfe
    n = len(tgt.devices)
    memory_limit = tgt.chip and tgt.chip.hbm_bytes
    if tgt.platform == "cpu":  # CPU devices share the host's memory.
        memory_limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // n
    report = Report(
        program=program, target=tgt.name, platform=tgt.platform, chip=tgt.chip and tgt.chip.name, devices=n,
        mesh={k: int(v) for k, v in mesh.shape.items()}, batch_size=batch, length=config.data.length,
        state_bytes=_per_device_bytes(state), hbm_bytes=memory_limit, model_flops=model_flops,
        peak_flops=tgt.chip and tgt.chip.peak_bf16_flops * n, lower_seconds=time.perf_counter() - start,
    )
    start = time.perf_counter()
    try:
        with _no_cache_writes() if tgt.platform != "cpu" else contextlib.nullcontext():
            compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return dataclasses.replace(report, error=str(e).strip().splitlines()[0])
    return _measured(dataclasses.replace(report, compile_seconds=time.perf_counter() - start), compiled)


def _measured(report: Report, compiled: jax.stages.Compiled) -> Report:
    """`report` with the memory and cost analyses of the compiled program filled in."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return dataclasses.replace(
        report,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        generated_code_bytes=memory.generated_code_size_in_bytes,
        xla_flops=None if flops is None or flops < 0 else float(flops) * report.devices,
    )


def summary(report: Report) -> list[str]:
    """The report as a few human-readable lines."""

    def gib(b: int | None) -> str:
        return "?" if b is None else f"{b / GIB:.3g} GiB"

    chip = f"{report.devices} x {report.chip or report.platform}"
    if report.chip:
        c = CHIPS[report.chip]
        chip += f" ({gib(c.hbm_bytes)} HBM, {c.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 per chip)"
    lines = [f"target       {report.target}: {chip}",
             f"mesh         {' '.join(f'{k}={v}' for k, v in report.mesh.items())}",
             f"program      {report.program}: batch {report.batch_size} x {report.length} tokens",
             f"state        {gib(report.state_bytes)} per device (parameters"
             f"{' and optimizer state' if report.program == 'train_step' else ''})"]
    if report.error is None:
        lines.append(f"per device   arguments {gib(report.argument_bytes)} | outputs "
                     f"{gib(report.output_bytes)} (donated {gib(report.alias_bytes)}) | temporaries "
                     f"{gib(report.temp_bytes)} | code {gib(report.generated_code_bytes)} | total "
                     f"{gib(report.total_bytes)}")
    limit = "HBM" if report.chip else "host memory per device"
    verdict = {True: "fits", False: "DOES NOT FIT", None: "unknown"}[report.fits]
    free = ""
    if report.fits:  # The runtime needs some HBM of its own: a program at the edge may still fail.
        free = f", {1 - report.total_bytes / report.hbm_bytes:.0%} free"
    lines.append(f"memory       {verdict}: {report.error or gib(report.total_bytes)} "
                 f"(of {gib(report.hbm_bytes)} {limit}{free})")
    xla = "?" if report.xla_flops is None else f"{report.xla_flops:.4g}"
    lines.append(f"flops/step   model {report.model_flops:.4g} | XLA {xla} (loop bodies once) | all devices")
    if report.compile_seconds is not None:
        lines.append(f"compile      lowered in {report.lower_seconds:.3g} s, compiled in "
                     f"{report.compile_seconds:.3g} s on this host")
    times = report.step_seconds()
    if times:
        lines.append("step time    " + " | ".join(f"{t:.4g} s at {u} of peak" for u, t in times.items()))
    return lines
