"""Scores samples written by launch/sample.py and writes the metrics as one JSON object.

    python launch/evaluate.py --config=configs/synthetic.py --workdir=runs/synthetic \
        --samples=samples.jsonl --output=metrics.json

Markov language (`data.name='markov'`): every sample is scored exactly against the chain that generated
the data (`chain.npz` of the config's corpus, or --chain): transition error, validity, chain NLL and
perplexity, entropy, and the mean NFE per sample; held-out data scored the same way is written under
`data`. Text (`data.name='owt'`): generative perplexity under a local Hugging Face GPT-2 directory
(--evaluator_dir) and unigram entropy, plus MAUVE against --reference samples when the optional
`mauve-text` package is installed. With --workdir, the model's last validation bits per token is added.
Bad input (a missing or malformed samples file, ids outside the vocabulary, a missing chain or evaluator)
is one line on stderr and exit code 2.
"""

import json
import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from proseco_jax import cli
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir; its metrics.jsonl adds the model's "
                               "validation bits per token.")
_SAMPLES = flags.DEFINE_string("samples", None, "JSONL samples of launch/sample.py.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "JSON file to write the metrics to.", required=True)
_CHAIN = flags.DEFINE_string("chain", None, "Markov language: chain.npz to score against (default: the "
                             "chain of the config's corpus).")
_NUM_DATA = flags.DEFINE_integer("num_data", 1000, "Held-out sequences scored as the data reference.")
_EVALUATOR_DIR = flags.DEFINE_string("evaluator_dir", None, "Text: local Hugging Face GPT-2 directory "
                                     "(config.json, model.safetensors, tokenizer.json).")
_REFERENCE = flags.DEFINE_string("reference", None, "Text: JSONL of human-written samples ('text' or "
                                 "'tokens'), scored as the data reference and used for MAUVE.")


def read_samples(path: str) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-empty line."""
    if not os.path.isfile(path):
        raise UsageError(f"samples file not found: {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path} line {number} is not JSON: {e.msg}") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path} line {number} is not a JSON object")
            records.append(record)
    if not records:
        raise UsageError(f"samples file {path} holds no samples")
    return records


def token_array(records: list[dict], path: str, length: int, vocab_size: int) -> np.ndarray:
    """int64 [N, length] of the records' `tokens`; a ragged, misshapen or out-of-vocabulary one fails."""
    rows = []
    for number, record in enumerate(records, 1):
        tokens = record.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                    for t in tokens):
            raise UsageError(f"{path} sample {number}: 'tokens' must be a list of integer ids")
        if len(tokens) != length:
            raise UsageError(f"{path} sample {number} has {len(tokens)} tokens, expected "
                             f"data.length={length}")
        bad = [t for t in tokens if not 0 <= t < vocab_size]
        if bad:
            raise UsageError(f"{path} sample {number} holds token id {bad[0]}, outside the vocabulary "
                             f"[0, {vocab_size})")
        rows.append(tokens)
    return np.asarray(rows, dtype=np.int64)


def nfe_means(records: list[dict]) -> dict[str, float]:
    """Mean of each NFE count present in every record."""
    out = {}
    for key in ("nfe", "predictor_nfe", "corrector_nfe"):
        values = [r.get(key) for r in records]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = float(np.mean(values))
    return out


def evaluate_markov(config, records: list[dict]) -> dict:
    from proseco_jax.data import datasets
    from proseco_jax.evaluation import markov_metrics

    data = None
    if _CHAIN.value:
        chain_path = _CHAIN.value
    else:
        data = datasets.load(config.data)
        chain_path = data.chain_path
    try:
        chain = markov_metrics.load_chain_npz(chain_path)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the chain: {e}") from None
    tokens = token_array(records, _SAMPLES.value, int(config.data.length), chain[0].shape[0])
    metrics = dict(sweep.markov_scores(tokens, chain), **nfe_means(records), num_samples=len(records))
    if data is None:
        try:
            data = datasets.load(config.data)
        except UsageError as e:
            print(f"no data reference: {e}", flush=True)
    if data is not None:
        held_out = sweep.held_out_tokens(data.sources["validation"], _NUM_DATA.value)
        metrics["data"] = sweep.data_reference(held_out, chain, int(config.data.length))
    return metrics


def _text_sequences(records: list[dict], path: str, encode, vocab_size: int) -> list[np.ndarray]:
    """Evaluator token ids of each record: its `text` retokenized, or (no tokenizer) its `tokens`."""
    sequences = []
    for number, record in enumerate(records, 1):
        if encode is not None and isinstance(record.get("text"), str):
            ids = np.asarray(encode(record["text"]), dtype=np.int64)
        elif isinstance(record.get("tokens"), list):
            ids = np.asarray(record["tokens"], dtype=np.int64)
        else:
            raise UsageError(f"{path} sample {number} has no 'text' (with a tokenizer) or 'tokens' to score")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise UsageError(f"{path} sample {number} holds ids outside the evaluator vocabulary "
                             f"[0, {vocab_size})")
        sequences.append(ids)
    return sequences


def evaluate_text(config, records: list[dict]) -> dict:
    from proseco_jax.evaluation import gpt2, text_metrics

    directory = _EVALUATOR_DIR.value
    if not directory:
        raise UsageError("text samples need --evaluator_dir, a local Hugging Face GPT-2 directory")
    try:
        module, params, gpt_config = gpt2.load_gpt2(directory)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load the evaluator: {e}") from None
    encode = None
    tokenizer_file = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(tokenizer_file):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            print("no retokenization (pip install tokenizers): scoring the samples' 'tokens'", flush=True)
        else:
            tokenizer = Tokenizer.from_file(tokenizer_file)
            encode = lambda text: tokenizer.encode(text).ids

    def score(records_: list[dict], path: str) -> tuple[dict, list[np.ndarray]]:
        sequences = _text_sequences(records_, path, encode, gpt_config.vocab_size)
        sequences = [s[: int(config.data.length)] for s in sequences]
        total, count = text_metrics.token_nll(sequences, gpt2.apply_fn(module), params,
                                              gpt_config.n_positions, gpt_config.eos_token_id)
        if count == 0:
            raise UsageError(f"{path}: no token to score (every sample is shorter than two tokens)")
        nonempty = [s for s in sequences if s.size]
        return {"gen_ppl": float(np.exp(total / count)), "scored_tokens": count,
                "entropy": text_metrics.unigram_entropy(nonempty), "num_samples": len(records_)}, sequences

    metrics, sequences = score(records, _SAMPLES.value)
    metrics.update(nfe_means(records))
    if _REFERENCE.value:
        reference = read_samples(_REFERENCE.value)
        metrics["data"], ref_sequences = score(reference, _REFERENCE.value)
        try:
            hidden = gpt2.apply_fn(module, return_hidden=True)
            p = text_metrics.last_token_features(ref_sequences, hidden, params, gpt_config.n_positions)
            q = text_metrics.last_token_features(sequences, hidden, params, gpt_config.n_positions)
            metrics["mauve"] = text_metrics.mauve_score(p, q)
        except ImportError as e:
            print(f"no MAUVE: {e}", flush=True)
    return metrics


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.config_or_fail(_CONFIG)
    records = read_samples(_SAMPLES.value)
    if config.data.name == "markov":
        metrics = evaluate_markov(config, records)
    else:
        metrics = evaluate_text(config, records)
    if _WORKDIR.value:
        metrics.update({f"model_{k}": v for k, v in sweep.validation_bits(_WORKDIR.value).items()})
    try:
        sweep.write_json(_OUTPUT.value, metrics)
    except OSError as e:
        raise UsageError(f"cannot write --output {_OUTPUT.value}: {e.strerror or e}") from None
    shown = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    print(json.dumps(sweep.jsonable(shown)), flush=True)
    print(f"wrote {_OUTPUT.value}", flush=True)


if __name__ == "__main__":
    cli.run(main)
