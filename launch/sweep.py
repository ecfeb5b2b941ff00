"""Samples one trained model under a grid of samplers and reports quality against NFE.

    python launch/sweep.py --config=configs/synthetic.py --workdir=runs/synthetic [--num_samples=128] \
        [--output_dir=DIR] [--mdlm_workdir=runs/synthetic_mdlm] [--quick]

Rows: MDLM over T in {4, 8, 16, 32, 64}, ReMDM at two T, ProSeCo with (S, omega) in {(1, 1), (2, 1),
(2, 2)} over T in {4, 8, 16, 32}, and the `max` preset; each scored against the Markov chain, held-out data as
the reference. Writes OUTPUT_DIR/results.json (data, rows, headline) and OUTPUT_DIR/quality_vs_nfe.png,
and prints the table and the headline (NFE ProSeCo needs to reach MDLM's best transition error; error and
entropy at the max preset). --mdlm_workdir adds the MDLM rows of a model trained without the corrector.
"""

from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, config_base
from proseco_jax.evaluation import sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir holding checkpoints/.", required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 128, "Samples drawn per row.", lower_bound=1)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where results.json and the PNG go (default: workdir).")
_MDLM_WORKDIR = flags.DEFINE_string("mdlm_workdir", None, "Workdir of the same model trained as plain MDLM "
                                    "(corrector.enabled=False): adds its MDLM rows.")
_QUICK = flags.DEFINE_bool("quick", False, "A few rows only (MDLM and ProSeCo at two T, the max preset).")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config_dict = cli.config_or_fail(_CONFIG)
    sweep.check_request(config_dict, _NUM_SAMPLES.value)
    if "sampling.batch_size" not in config_flags.get_override_values(flags.FLAGS["config"]):
        config_dict.sampling.batch_size = _NUM_SAMPLES.value  # one compiled call per row
    output_dir = _OUTPUT_DIR.value or _WORKDIR.value
    sweep.sweep_workdirs(config_base.resolve(config_dict), _WORKDIR.value, output_dir,
                         num_samples=_NUM_SAMPLES.value, quick=_QUICK.value, mdlm_workdir=_MDLM_WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
