"""Draws samples from a trained model with any sampler (ProSeCo, MDLM, ReMDM, confidence, LLaDA blocks).

    python launch/sample.py --config=configs/synthetic.py --workdir=runs/synthetic --output=samples.jsonl \
        --num_samples=64 [--config.sampling.sampler=proseco --config.sampling.preset=balanced]

Without --config, the workdir's config.json (written by launch/train.py or launch/convert.py) is used.
Loads the EMA parameters of the latest checkpoint in --workdir and writes one JSON object per sample:
`tokens`, `text`, `nfe`, `predictor_nfe`, `corrector_nfe` (and `history`, every iterate, with --history).
The whole unmask-then-correct schedule runs on device in one compiled `lax.scan`, the batch sharded over
the mesh's data axes. Each finished batch is appended to --output at once: Ctrl-C (or SIGTERM) stops after
the current batch, and rerunning the same command continues the file (--noresume starts it over).
"""

import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, config_base, inference, samples_io, stopping
from proseco_jax.errors import UsageError
from proseco_jax.stopping import StopRequest

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); default: the "
                                          "workdir's config.json.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "JSONL file to write, one sample per line.", required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "How many samples the file should hold.",
                                    lower_bound=1)
_HISTORY = flags.DEFINE_bool("history", False, "Also write every iterate z_t of each sample ('history').")
_PROMPT = flags.DEFINE_string("prompt", "", "Comma-separated token ids of a fixed prefix, e.g. '3,17,5'.")
_DISTRIBUTED = cli.DistributedFlags()
_RESUME = flags.DEFINE_bool("resume", True, "Keep the samples already in --output and draw only the rest.")


def records(out: dict[str, np.ndarray], decode) -> list[dict]:
    """One JSON record per sample of a batch; `decode` turns its tokens into its text."""
    rows = []
    for i, tokens in enumerate(out["tokens"]):
        row = {"tokens": tokens.tolist(), "text": decode(tokens),
               **{key: int(out[key][i]) for key in ("nfe", "predictor_nfe", "corrector_nfe")}}
        if "history" in out:
            row["history"] = out["history"][:, i].tolist()
        rows.append(row)
    return rows


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
    _DISTRIBUTED.initialize()
    primary = jax.process_index() == 0  # With several processes, process 0 alone writes and reports.
    say = print if primary else (lambda *args, **kwargs: None)
    if flags.FLAGS[_CONFIG.name].present:
        config = config_base.resolve(cli.config_or_fail(_CONFIG))
        inference.check_workdir_config(config, _WORKDIR.value)
    else:
        config = inference.workdir_config(_WORKDIR.value)
    output, total = _OUTPUT.value, _NUM_SAMPLES.value
    prompt = parse_prompt(_PROMPT.value)
    done = samples_io.prepare_output(output, resume=_RESUME.value) if primary else 0
    done = stopping.agreed_value(done)  # Every process draws the same remaining samples.
    if done >= total:
        say(f"{output} already holds {done} samples (asked for {total}); nothing to do", flush=True)
        return
    loaded = inference.load_model(config, _WORKDIR.value)
    decode = inference.text_decoder(config, warn=say)
    settings = config.sampler_settings
    say(f"sampling {total - done} of {total} samples into {output} (checkpoint step {loaded.step}): "
          f"{settings.sampler}, T={settings.steps}, at most {settings.max_nfe} NFE per sample, batches of "
          f"{settings.batch_size}", flush=True)
    start, first = time.time(), done
    with StopRequest("the current batch") as stop:
        for out in inference.sample_batches(loaded, total, start=done, prompt=prompt, history=_HISTORY.value):
            if primary:
                samples_io.append(output, records(out, decode))
            done += out["tokens"].shape[0]
            rate = (done - first) / (time.time() - start)
            say(f"{done}/{total} samples | {rate:.2f} samples/s | mean NFE {np.mean(out['nfe']):.1f} | "
                f"ETA {(total - done) / max(rate, 1e-9):.0f} s", flush=True)
            if stop.agreed() and done < total:
                say(f"{stop.signal_name or 'stop'}: {done} of {total} samples are in {output}; rerun the "
                    "same command to continue", flush=True)
                return
    say(f"wrote {done} samples (checkpoint step {loaded.step}) to {output}", flush=True)


if __name__ == "__main__":
    cli.run(main)
