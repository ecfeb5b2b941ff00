"""Samples one trained model under a grid of samplers and reports quality against NFE.

    python launch/sweep.py --config=configs/synthetic.py --workdir=runs/synthetic [--num_samples=128] \
        [--output_dir=DIR] [--mdlm_workdir=runs/synthetic_mdlm] [--quick]
    python launch/sweep.py --config=configs/text_files.py --workdir=runs/text --evaluator_dir=gpt2 \
        --config.data.files='docs/*.txt' [--num_samples=64] [--quick]

The corpus picks how rows are scored. Markov language: MDLM over T in {4, 8, 16, 32, 64}, ReMDM at two
T, ProSeCo with (S, omega) in {(1, 1), (2, 1), (2, 2)} over T in {4, 8, 16, 32}, and the `max` preset,
each scored against the chain. Text (text_files, owt, text8): MDLM, ReMDM and ProSeCo (omega = 1, S in
{1, 2}) at T in {L/8, L/4, L/2, L} (the paper's 128..1024 at L = 1024; fewer rows below L = 512), and
the `max` preset, each scored by gen-PPL under the local Hugging Face GPT-2 of --evaluator_dir (the
decoded text retokenized), the mean per-sample unigram entropy of the token ids, and MAUVE when
`mauve-text` is installed. Held-out data scored the same way is the reference. Writes
OUTPUT_DIR/results.json (data, rows, headline) and OUTPUT_DIR/quality_vs_nfe.png, and prints the table
and the headline (NFE ProSeCo needs to reach MDLM's best transition error or gen-PPL; that figure and
entropy at the max preset). Molecules (configs/qm9.py): the guidance grid (gamma in {0..5} x T in
{32, 64, 128} x MDLM / ProSeCo, class 1) scored by RDKit, the headline ProSeCo's frontier of novel samples
against their mean property next to MDLM's, the plot OUTPUT_DIR/novel_vs_property.png. --mdlm_workdir
adds the MDLM rows of a model trained without the corrector. --seeds=N samples the grid under N sampling
seeds (seed, seed+1, ...) of the one model: the table shows each setting's median over them, the headline
each figure's median and range (min..max), the bars judged on the median, results.json every seed's rows
and headline (`per_seed`).
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
_EVALUATOR_DIR = flags.DEFINE_string("evaluator_dir", None, "Text: local Hugging Face GPT-2 directory "
                                     "(config.json, model.safetensors, tokenizer.json) scoring gen-PPL.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Sampling seeds (seed, seed+1, ...) of the one model: every "
                              "headline figure as median and range over them.", lower_bound=1)
_NUM_DATA = flags.DEFINE_integer("num_data", None, "Held-out sequences scored as the data reference "
                                 "(default: 1000 for the Markov language, --num_samples for text).",
                                 lower_bound=1)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config_dict = cli.config_or_fail(_CONFIG)
    sweep.check_request(config_dict, _NUM_SAMPLES.value, _EVALUATOR_DIR.value, need_evaluator=True)
    if "sampling.batch_size" not in config_flags.get_override_values(flags.FLAGS["config"]):
        config_dict.sampling.batch_size = _NUM_SAMPLES.value  # one compiled call per row
    output_dir = _OUTPUT_DIR.value or _WORKDIR.value
    sweep.sweep_workdirs(config_base.resolve(config_dict), _WORKDIR.value, output_dir,
                         num_samples=_NUM_SAMPLES.value, quick=_QUICK.value, mdlm_workdir=_MDLM_WORKDIR.value,
                         num_data=_NUM_DATA.value, evaluator_dir=_EVALUATOR_DIR.value, seeds=_SEEDS.value)


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
