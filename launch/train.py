"""Trains a ProSeCo masked diffusion model.

    python launch/train.py --config=configs/synthetic.py --workdir=runs/synthetic [--config.FIELD=VALUE]

Writes WORKDIR/metrics.jsonl, TensorBoard files under WORKDIR/tensorboard and orbax checkpoints under
WORKDIR/checkpoints; rerunning the same command resumes from the latest checkpoint. On a multi-host pod
slice run the same command on every host with --multihost (elsewhere add --coordinator_address,
--num_processes and --process_id); each process reads its own rows, and only process 0 writes metrics.
One run writes a workdir at a time: a second one started on it stops at once, in one line naming the first
(a killed run's lock goes with it). A full disk is one line too, saying which checkpoint is kept.
"""

from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, config_base, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.", required=True)
_DISTRIBUTED = cli.DistributedFlags()


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_base.resolve(cli.config_or_fail(_CONFIG))  # Bad settings fail before the workdir is made.
    _DISTRIBUTED.initialize()
    cli.sole_writer(_WORKDIR.value)
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
