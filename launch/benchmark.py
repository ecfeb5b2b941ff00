"""Times the ProSeCo train step against an MDLM-only step, or the on-device sampler against a host loop.

    python launch/benchmark.py --what=train_step --config=configs/synthetic.py [--shape=tiny|large|config]
        [--layers=N --hidden=D --heads=H --length=L --batch=B --vocab=V] [--steps=K --warmup=W]
        [--devices=1 --threads=0] [--config.FIELD=VALUE ...]
    python launch/benchmark.py --what=sample --config=configs/synthetic.py --shape=tiny \
        --config.sampling.steps=64 --config.sampling.corrector_steps=2
    python launch/benchmark.py --what=sample --config=configs/llada_tiny.py   (any registered model family)

Both programs of a benchmark run in the same process, alternating (`proseco_jax/benchmarking.py`); `mfu` is
model FLOP/s over XLA's matmul rate in the model's compute dtype (`model.dtype`), measured in the same run.
Only figures measured in this run are printed; the last line of stdout is one JSON object. The `tiny` and
`large` shapes are those at which the authors' PyTorch code is timed by its own harness (cond_dim applies to
models that have it): compare with it only when both run on the same machine.
"""

import json
import os

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

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WHAT = flags.DEFINE_enum("what", "train_step", list(benchmarking.BENCHMARKS), "What to time.")
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


def shaped_config(config):
    """config with the --shape preset, then the single size flags, written in (length sets max_length)."""
    shapes = dict(SHAPES.get(_SHAPE.value, {}))
    shapes.update({key: holder.value for key, holder in _SIZES.items() if holder.value is not None})
    for key, value in shapes.items():
        section, field = SHAPE_FIELDS[key].split(".")
        if field not in config[section]:  # A field of another model family (cond_dim).
            continue
        config[section][field] = value
        if key == "length":
            config.model.max_length = value
        if key == "batch":
            config.sampling.batch_size = value
    return config_base.resolve(config)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = shaped_config(cli.config_or_fail(_CONFIG))
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
    cli.run(main)
