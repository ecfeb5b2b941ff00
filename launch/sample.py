"""Draws samples from a trained model with any sampler (ProSeCo, MDLM, ReMDM, confidence, LLaDA blocks).

    python launch/sample.py --config=configs/synthetic.py --workdir=runs/synthetic --output=samples.jsonl \
        --num_samples=64 [--config.sampling.sampler=proseco --config.sampling.preset=balanced]

Loads the EMA parameters of the latest checkpoint in --workdir and writes one JSON object per sample:
`tokens`, `text`, `nfe`, `predictor_nfe`, `corrector_nfe` (and `history`, every iterate, with --history).
The whole unmask-then-correct schedule runs on device in one compiled `lax.scan`, the batch sharded over
the mesh's data axes.
"""

import json
import os
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, config_base, inference
from proseco_jax.errors import UsageError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "JSONL file to write, one sample per line.", required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "How many samples to draw.")
_HISTORY = flags.DEFINE_bool("history", False, "Also write every iterate z_t of each sample ('history').")
_PROMPT = flags.DEFINE_string("prompt", "", "Comma-separated token ids of a fixed prefix, e.g. '3,17,5'.")


def detokenize(tokens: np.ndarray) -> str:
    """Text of a sample. The Markov language has no surface form, so its tokens are written as 'tN'."""
    return " ".join(f"t{int(t)}" for t in tokens)


def parse_prompt(text: str) -> np.ndarray | None:
    if not text.strip():
        return None
    try:
        return np.asarray([int(x) for x in text.split(",")], np.int32)
    except ValueError:
        raise UsageError(f"--prompt must be comma-separated integer token ids, got {text!r}") from None


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_base.resolve(cli.config_or_fail(_CONFIG))
    output = _OUTPUT.value
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        partial = output + ".partial"
        handle = open(partial, "w", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write --output {output}: {e.strerror or e}") from None
    loaded = inference.load_model(config, _WORKDIR.value)
    prompt = parse_prompt(_PROMPT.value)
    start, written = time.time(), 0
    with handle:
        for out in inference.sample_batches(loaded, _NUM_SAMPLES.value, prompt=prompt, history=_HISTORY.value):
            for i in range(out["tokens"].shape[0]):
                record = {
                    "tokens": out["tokens"][i].tolist(),
                    "text": detokenize(out["tokens"][i]),
                    "nfe": int(out["nfe"][i]),
                    "predictor_nfe": int(out["predictor_nfe"][i]),
                    "corrector_nfe": int(out["corrector_nfe"][i]),
                }
                if "history" in out:
                    record["history"] = out["history"][:, i].tolist()
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            written += out["tokens"].shape[0]
            rate = written / (time.time() - start)
            print(
                f"{written}/{_NUM_SAMPLES.value} samples | {rate:.2f} samples/s | "
                f"mean NFE {np.mean(out['nfe']):.1f}",
                flush=True,
            )
    os.replace(partial, output)
    print(f"wrote {written} samples (checkpoint step {loaded.step}) to {output}", flush=True)


if __name__ == "__main__":
    cli.run(main)
