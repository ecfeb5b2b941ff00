"""Compiles a config's train step (or sampler) ahead of time for a TPU slice, from any machine.

    python launch/aot_compile.py --config=configs/owt_small.py --topology=v5e:2x4 --config.mesh.fsdp=8
    python launch/aot_compile.py --config=configs/owt_small.py --topology=v4:2x2x4 --what=sample \
        --config.sampling.batch_size=16
    python launch/aot_compile.py --config=configs/synthetic.py --topology=cpu:8

--topology is a TPU topology that libtpu describes without a TPU (v4:2x2x4, v5e:2x4, v5e:8x8, v5p:4x4x4,
v6e:4x4, ...; needs `pip install -e '.[tpu]'`) or cpu:N (the first N local CPU devices). Prints, per
device, the memory the program needs (arguments, outputs, temporaries, generated code) against the chip's
HBM, the FLOPs per step (XLA's count and our model count) and the step time they imply at 40% and 60% of
the chips' peak bf16 rate; the last line of stdout is one JSON object. `--config.FIELD=VALUE` overrides
work, so the largest batch that fits is a search over --config.train.batch_size. Exit code 1: the program
does not fit the chip's memory; 2: bad input (unknown topology, a mesh or batch the devices cannot split).
"""

import json

import jax
from absl import flags
from ml_collections import config_flags

from proseco_jax import aot, cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology (v5e:2x4, v4:2x2x4, v5p:4x4x4, ...) or "
                                "cpu:N.", required=True)
_WHAT = flags.DEFINE_enum("what", "train_step", list(aot.PROGRAMS), "The program to compile.")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.config_or_fail(_CONFIG)
    # Compile-only TPU executables cannot be read back from the persistent compilation cache.
    jax.config.update("jax_enable_compilation_cache", False)
    report = aot.compile_for(config, aot.target(_TOPOLOGY.value), _WHAT.value)
    for line in aot.summary(report):
        print(line)
    print(json.dumps(report.to_json()), flush=True)
    if report.exit_code:
        reason = report.error or "needs more memory than the chip has"
        cli.fail(f"{report.program} does not fit {report.target}: {reason}", code=report.exit_code)


if __name__ == "__main__":
    cli.run(main)
