"""Times the ProSeCo train step against an MDLM-only step, or the on-device sampler against a host loop.

    python launch/benchmark.py --what=train_step --config=configs/synthetic.py [--shape=tiny|large|config]
        [--layers=N --hidden=D --heads=H --length=L --batch=B --vocab=V] [--steps=K --warmup=W]
        [--devices=1 --threads=0] [--config.FIELD=VALUE ...]
    python launch/benchmark.py --what=sample --config=configs/synthetic.py --shape=tiny \
        --config.sampling.steps=64 --config.sampling.corrector_steps=2
    python launch/benchmark.py --what=sample --config=configs/llada_tiny.py   (any registered model family)
    python launch/benchmark.py --what=vs_reference --config=configs/synthetic.py --ref_dir=DIR --bench_ref=DIR
        [--ref_python=python] [--shapes=tiny,large] [--precisions=fp32,bf16] [--steps=K --warmup=W]

Both programs of a benchmark run in the same process, alternating (`proseco_jax/benchmarking.py`); `mfu` is
model FLOP/s over XLA's matmul rate in the model's compute dtype (`model.dtype`), measured in the same run.
Only figures measured in this run are printed; the last line of stdout is one JSON object. The `tiny` and
`large` shapes are those at which the authors' PyTorch code is timed by its own harness (cond_dim applies to
models that have it): compare with it only when both run on the same machine.

--what=vs_reference does so in one command: for each shape and precision (bf16: `model.dtype=bfloat16`
for ours, `torch.autocast("cpu", torch.bfloat16)` around the loss for theirs) it runs the authors' ProSeCo
and MDLM train steps (`launch/device_check_ref.py`, in --ref_python, with the same steps, warm-up and
threads), then ours, and prints one JSON line per shape, precision and step, then a markdown table of
tokens/s, ours over theirs, and our MFU. --ref_dir and --bench_ref are as for that script; without them
only our figures are measured (the reference's columns read '-'). Size flags apply to both programs.

On the CPU, like the other binaries that run steps over and over, it keeps the memory XLA frees for the next
step (`proseco_jax/host_memory.py`); --nokeep_freed_memory times the steps with each step's buffers mapped
afresh, as before that setting.
"""

import json
import os
import sys

import jax
from absl import flags
from ml_collections import config_flags

from proseco_jax import benchmarking, cli, config_base, configlib, sharding, train

# Shape fields of every model family, but cond_dim (the DiT's time conditioning) that others lack.
SHAPE_FIELDS = {"layers": "model.num_layers", "hidden": "model.hidden_size", "heads": "model.num_heads",
                "cond_dim": "model.cond_dim", "length": "data.length", "batch": "train.batch_size",
                "vocab": "data.vocab_size"}
SHAPES = {"tiny": dict(layers=4, hidden=256, heads=4, cond_dim=128, length=128, batch=32, vocab=64),
          "large": dict(layers=8, hidden=512, heads=8, cond_dim=128, length=256, batch=16, vocab=64)}

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}  # --precisions names -> model.dtype.
# Our shape keys -> the reference's (launch/device_check_ref.py's --train_shape).
REF_SHAPE_KEYS = {"layers": "n_blocks", "hidden": "hidden_size", "heads": "n_heads", "cond_dim": "cond_dim",
                  "length": "length", "vocab": "vocab", "batch": "batch"}
REF_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device_check_ref.py")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WHAT = flags.DEFINE_enum("what", "train_step", [*benchmarking.BENCHMARKS, "vs_reference"], "What to time.")
_SHAPE = flags.DEFINE_enum("shape", "config", ["config", *SHAPES], "Shape preset ('config' keeps the "
                           "config's shapes).")
_SIZES = {key: flags.DEFINE_integer(key, None, f"{field} (overrides --shape).", lower_bound=1)
          for key, field in SHAPE_FIELDS.items() if key != "cond_dim"}
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls of each program.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls of each program after compiling.", lower_bound=0)
_DEVICES = flags.DEFINE_integer("devices", 1, "Mesh over the first N devices (0: all of them).",
                                lower_bound=0)
_THREADS = flags.DEFINE_integer("threads", 0, "Run on N CPU cores (0: all); XLA sizes its thread pool "
                                "by the cores it may use.", lower_bound=0)
_SHAPES = flags.DEFINE_list("shapes", list(SHAPES), f"--what=vs_reference: shape presets to time, of "
                            f"{', '.join(SHAPES)}.")
_PRECISIONS = flags.DEFINE_list("precisions", list(PRECISIONS), f"--what=vs_reference: precisions to time, "
                                f"of {', '.join(PRECISIONS)}.")
_REF_DIR = flags.DEFINE_string("ref_dir", None, "--what=vs_reference: the authors' repository as files.")
_BENCH_REF = flags.DEFINE_string("bench_ref", None, "--what=vs_reference: the directory of bench_ref.py.")
_REF_PYTHON = flags.DEFINE_string("ref_python", sys.executable, "--what=vs_reference: a Python that has "
                                  "torch and the reference's packages (hydra, lightning, ...).")


def shape_sizes(shape: str) -> dict[str, int]:
    """The sizes of a --shape preset ('config': none), then of the single size flags."""
    sizes = dict(SHAPES.get(shape, {}))
    sizes.update({key: holder.value for key, holder in _SIZES.items() if holder.value is not None})
    return sizes


def shaped_config(config, shape: str):
    """config with a --shape preset, then the single size flags, written in (length sets max_length)."""
    for key, value in shape_sizes(shape).items():
        section, field = SHAPE_FIELDS[key].split(".")
        if field not in config[section]:  # A field of another model family (cond_dim).
            continue
        config[section][field] = value
        if key == "length":
            config.model.max_length = value
        if key == "batch":
            config.sampling.batch_size = value
    return config_base.resolve(config)


def reference_tokens_per_sec(sizes: dict[str, int], precision: str, threads: int) -> dict[str, float]:
    """The reference's tokens/s of its train steps at sizes, keyed by step; its JSON lines are relayed."""
    shape = {REF_SHAPE_KEYS[key]: value for key, value in sizes.items()}
    command = [_REF_PYTHON.value, REF_SCRIPT, f"--ref_dir={_REF_DIR.value}",
               f"--bench_ref={_BENCH_REF.value}", f"--train_shape={json.dumps(shape)}",
               f"--precision={precision}", f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
               f"--threads={threads}", "--budget_sec=100000"]
    records, error = benchmarking.run_reference(command)
    for record in records:
        print(json.dumps(record), flush=True)
    if error is not None:
        cli.fail(f"the reference failed ({error})")
    return {r["program"]: r["tokens_per_sec"] for r in records if "tokens_per_sec" in r}


def vs_reference(config, mesh, threads: int) -> None:
    """Ours against the reference at each shape and precision: JSON lines, then the markdown table."""
    if not _REF_DIR.value or not _BENCH_REF.value:
        print(json.dumps({"part": "reference", "skipped": "no --ref_dir and --bench_ref: only our figures"}),
              flush=True)
    rows = []
    for shape in _SHAPES.value:
        sizes = {"cond_dim": SHAPES[shape]["cond_dim"], **shape_sizes(shape)}
        for precision in _PRECISIONS.value:
            theirs = (reference_tokens_per_sec(sizes, precision, threads)
                      if _REF_DIR.value and _BENCH_REF.value else {})
            cfg = config.copy_and_resolve_references()
            cfg.model.dtype = PRECISIONS[precision]
            ours = benchmarking.run("train_step", shaped_config(cfg, shape), mesh, steps=_STEPS.value,
                                    warmup=_WARMUP.value)
            for row in benchmarking.vs_reference_rows(shape, precision, ours, theirs):
                rows.append(row)
                print(json.dumps({**row, **{key: sizes[key] for key in REF_SHAPE_KEYS},
                                  "steps": _STEPS.value, "warmup": _WARMUP.value, "threads": threads,
                                  "matmul_gflops": ours["matmul_gflops"],
                                  "other_cores_busy": ours["other_cores_busy"]}), flush=True)
    print(benchmarking.markdown_table(rows), flush=True)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    for name, holder, known in (("shapes", _SHAPES, SHAPES), ("precisions", _PRECISIONS, PRECISIONS)):
        if unknown := [value for value in holder.value if value not in known]:
            cli.fail(f"--{name}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    for name, holder in (("ref_dir", _REF_DIR), ("bench_ref", _BENCH_REF)):
        if holder.value and not os.path.isdir(holder.value):
            cli.fail(f"--{name}={holder.value!r} is not a directory")
    raw_config = cli.config_or_fail(_CONFIG)
    config = shaped_config(raw_config.copy_and_resolve_references(), _SHAPE.value)
    cores = sorted(os.sched_getaffinity(0))
    if _THREADS.value > len(cores):
        cli.fail(f"--threads={_THREADS.value} but only {len(cores)} cores are available")
    if _THREADS.value:  # Before jax starts its backend: the CPU thread pool is sized then.
        os.sched_setaffinity(0, cores[: _THREADS.value])
    devices = jax.devices()
    if _DEVICES.value > len(devices):
        cli.fail(f"--devices={_DEVICES.value}, but {len(devices)} are available")
    mesh = sharding.make_mesh(config.mesh, devices[: _DEVICES.value] if _DEVICES.value else devices)
    train.check_mesh(config, mesh)
    if _WHAT.value == "vs_reference":
        vs_reference(raw_config, mesh, _THREADS.value or len(cores))
        return
    figures = benchmarking.run(_WHAT.value, config, mesh, steps=_STEPS.value, warmup=_WARMUP.value)
    model_fields = configlib.to_dict(config.model)
    figures.update({key: configlib.get(config, field) for key, field in SHAPE_FIELDS.items()
                    if not field.startswith("model.") or field.removeprefix("model.") in model_fields},
                   model=config.model.name,
                   **{key: model_fields[key] for key in ("mlp_ratio", "mlp_hidden_size", "dtype")
                      if key in model_fields},
                   steps=_STEPS.value, warmup=_WARMUP.value, threads=_THREADS.value or len(cores))
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
