"""Scores samples written by launch/sample.py and writes the metrics as one JSON object.

    python launch/evaluate.py --config=configs/synthetic.py --workdir=runs/synthetic \
        --samples=samples.jsonl --output=metrics.json

Markov language (`data.name='markov'`): every sample is scored exactly against the chain that generated
the data (`chain.npz` of the config's corpus, or --chain): transition error, validity, chain NLL and
perplexity, entropy, and the mean NFE per sample; held-out data scored the same way is written under
`data`. Text (text_files, owt, text8): generative perplexity under a local Hugging Face GPT-2 directory
(--evaluator_dir) and unigram entropy, plus MAUVE against --reference samples when the optional
`mauve-text` package is installed. With --workdir, the model's last validation bits per token is added,
and --config may be left out (the workdir's config.json is then used; a --config given with it must
describe the same model).
Bad input (a missing or malformed samples file, ids outside the vocabulary, a missing chain or evaluator)
is one line on stderr and exit code 2.
"""

from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, config_base, fileio, samples_io
from proseco_jax.data import chain as markov_chain
from proseco_jax.data import datasets
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import markov_scoring, report, sample_metrics, scoring, text_scoring

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); default: the "
                                          "--workdir's config.json.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir; its metrics.jsonl adds the model's "
                               "validation bits per token.")
_SAMPLES = flags.DEFINE_string("samples", None, "JSONL samples of launch/sample.py.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "JSON file to write the metrics to.", required=True)
_CHAIN = flags.DEFINE_string("chain", None, "Markov language: chain.npz to score against (default: the "
                             "chain of the config's corpus).")
_NUM_DATA = flags.DEFINE_integer("num_data", 1000, "Held-out sequences scored as the data reference.",
                                 lower_bound=1)
_EVALUATOR_DIR = flags.DEFINE_string("evaluator_dir", None, "Text: local Hugging Face GPT-2 directory "
                                     "(config.json, model.safetensors, tokenizer.json).")
_REFERENCE = flags.DEFINE_string("reference", None, "Text: JSONL of human-written samples ('text' or "
                                 "'tokens'), scored as the data reference and used for MAUVE.")


def _markov_metrics(config: config_base.Config, records: list[dict]) -> dict:
    """Scores against --chain (or the corpus's chain); the corpus, when it loads, is the data reference."""
    data = None if _CHAIN.value else datasets.load(config.data)
    chain = markov_chain.load_chain(_CHAIN.value or data.chain_path)
    if data is None:
        try:
            data = datasets.load(config.data)
        except UsageError as e:
            print(f"no data reference: {e}", flush=True)
    held_out = scoring.held_out_tokens(data.sources["validation"], _NUM_DATA.value) if data else None
    return markov_scoring.score_markov(records, chain, config.data.length, held_out, source=_SAMPLES.value)


def _text_metrics(config: config_base.Config, records: list[dict]) -> dict:
    if not _EVALUATOR_DIR.value:
        raise UsageError("text samples need --evaluator_dir, a local Hugging Face GPT-2 directory")
    reference = samples_io.read_samples(_REFERENCE.value) if _REFERENCE.value else None
    return text_scoring.score_text(records, _EVALUATOR_DIR.value, config.data.length, reference,
                              source=_SAMPLES.value, reference_source=_REFERENCE.value or "")


def _chemistry_metrics(config: config_base.Config, records: list[dict]) -> dict:
    """Molecules: validity, uniqueness, novelty against the corpus and the labelled property (the sweep's
    chemistry scorer), the held-out molecules scored the same way as the data reference."""
    data = datasets.load(config.data)
    scorer = scoring.make_scorer(config, data)
    tokens = samples_io.token_array(records, _SAMPLES.value, config.data.length, config.data.vocab_size)
    metrics = dict(scorer.score(tokens), **sample_metrics.nfe_means(samples_io.nfe_columns(records)))
    metrics["data"] = scorer.reference(scoring.held_out_tokens(data.sources["validation"], _NUM_DATA.value))
    return metrics


SCORES = {"markov": _markov_metrics, "qm9": _chemistry_metrics}  # by data.name; other corpora are text


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _WORKDIR.value:  # --config (checked against the workdir's model) or the workdir's config.json
        config = cli.sampling_config(_CONFIG, _WORKDIR.value)
    else:
        config = config_base.resolve(cli.config_or_fail(_CONFIG))
    records = samples_io.read_samples(_SAMPLES.value)
    score = SCORES.get(config.data.name, _text_metrics)
    metrics = score(config, records)
    if _WORKDIR.value:
        metrics.update({f"model_{k}": v for k, v in report.validation_bits(_WORKDIR.value).items()})
    try:
        fileio.atomic_write_json(_OUTPUT.value, metrics)
    except OSError as e:
        raise UsageError(f"cannot write --output {_OUTPUT.value}: {e.strerror or e}") from None
    shown = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    print(fileio.dumps(shown), flush=True)
    print(f"wrote {_OUTPUT.value}", flush=True)


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
