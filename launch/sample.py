"""Draws samples from a trained model with any sampler (ProSeCo, MDLM, ReMDM, confidence, LLaDA blocks).

    python launch/sample.py --config=configs/synthetic.py --workdir=runs/synthetic --output=samples.jsonl \
        --num_samples=64 [--config.sampling.sampler=proseco --config.sampling.preset=balanced]

Text prompts (LLaDA-style models with a Hugging Face tokenizer):

    python launch/sample.py --workdir=runs/llada --output=answers.jsonl --chat \
        --prompt="What is 3 + 4?" [--prompt_file=questions.jsonl] [--tokenizer=DIR] [--gen_length=256]

--prompt_file holds one prompt per line, or JSONL objects with `prompt` (text) or `messages` (chat
messages); their other fields (e.g. `task_id`) are copied into the samples. --chat applies the tokenizer's
chat template (the tokenizer must have one). Each prompt keeps its tokens and is followed by --gen_length
generated positions (0: the most that the longest prompt leaves of data.length and the sampler can fill:
for the block sampler, whole blocks whose number divides sampling.steps); the block sampler stops at the
tokenizer's EOS. Each record adds
`prompt_index`, `sample_index`, `prompt_length`, `completion_ids` (generated ids before EOS / end of turn)
and `text` (the completion alone) to `tokens` (prompt included) and the NFE counts.

Without --config, the workdir's config.json (written by launch/train.py or launch/convert.py) is used.
Loads the EMA parameters of the latest checkpoint in --workdir and writes one JSON object per sample:
`tokens`, `text`, `nfe`, `predictor_nfe`, `corrector_nfe` (and `history`, every iterate, with --history);
molecules (configs/qm9.py) write their SMILES as `text`, and a guided run
(`--config.sampling.guidance_label=1 --config.sampling.guidance_scale=3`) adds the `label` it was guided to
and `step_nfe` (a guided call counted once, the authors' count).
The whole unmask-then-correct schedule runs on device in one compiled `lax.scan`, the batch sharded over
the mesh's data axes. Each finished batch is appended to --output at once: Ctrl-C (or SIGTERM) stops after
the current batch, and rerunning the same command continues the file (--noresume starts it over). One
sampler writes --output at a time (a second one stops at once in one line); a full disk stops it in one
line, the file holding whole samples only.
"""

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, inference, prompts, samples_io
from proseco_jax.errors import UsageError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); default: the "
                                          "workdir's config.json.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "JSONL file to write, one sample per line.", required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "How many samples the file should hold (default "
                                    "16); with text prompts, samples per prompt (default 1).", lower_bound=1)
_HISTORY = flags.DEFINE_bool("history", False, "Also write every iterate z_t of each sample ('history').")
_PROMPT_IDS = flags.DEFINE_string("prompt_ids", "", "Comma-separated token ids of a fixed prefix, e.g. "
                                  "'3,17,5'.")
_PROMPT = flags.DEFINE_string("prompt", "", "A text prompt (needs the model's tokenizer).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", "", "Text prompts: one per line, or JSONL with 'prompt' or "
                                   "'messages'.")
_CHAT = flags.DEFINE_bool("chat", False, "Apply the tokenizer's chat template (it must have one) to text "
                          "prompts (else BOS + text).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Hugging Face tokenizer directory (or hub id) of text "
                                 "prompts (default: data.tokenizer_path, or the workdir when it holds "
                                 "tokenizer.json).")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 0, "Text prompts: positions generated after each prompt (0: "
                                   "the most that the longest prompt leaves of data.length and the sampler "
                                   "can fill).", lower_bound=0)
_STOP_AT_EOS = flags.DEFINE_bool("stop_at_eos", True, "Text prompts: the block sampler stops at the "
                                 "tokenizer's EOS when sampling.eos_id is -1; each sample stops at its own "
                                 "(sampling.stop_on_eos='sample'), so a resumed file equals an "
                                 "uninterrupted run's.")
_DISTRIBUTED = cli.DistributedFlags()
_RESUME = flags.DEFINE_bool("resume", True, "Keep the samples already in --output and draw only the rest.")


def parse_prompt(text: str) -> np.ndarray | None:
    if not text.strip():
        return None
    try:
        return np.asarray([int(x) for x in text.split(",")], np.int32)
    except ValueError:
        raise UsageError(f"--prompt_ids must be comma-separated integer token ids, got {text!r}") from None


def text_prompts_given() -> bool:
    """--prompt or --prompt_file was passed, even empty (an empty prompt is refused, not sampled without)."""
    return flags.FLAGS["prompt"].present or flags.FLAGS["prompt_file"].present


def prompt_records() -> list[dict]:
    """The text prompts of --prompt or --prompt_file (never both)."""
    if flags.FLAGS["prompt"].present and flags.FLAGS["prompt_file"].present:
        raise UsageError("give --prompt or --prompt_file, not both")
    if _PROMPT_IDS.value:
        raise UsageError("--prompt_ids (token ids) and text prompts exclude each other")
    if flags.FLAGS["prompt"].present:
        return [{"prompt": _PROMPT.value}]
    return samples_io.read_prompts(_PROMPT_FILE.value)


def sample_text(config, output: str, primary: bool, say) -> None:
    """Completes the text prompts into `output`, resuming after the samples it already holds."""
    if _HISTORY.value:
        raise UsageError("--history is not written for text prompts")
    tokenizer = prompts.chat_tokenizer(config, _WORKDIR.value, _TOKENIZER.value)
    per_prompt = _NUM_SAMPLES.value or 1
    run = prompts.prepare_prompts(config, tokenizer, prompt_records(), chat=_CHAT.value,
                                  gen_length=_GEN_LENGTH.value, samples_per_prompt=per_prompt,
                                  stop_at_eos=_STOP_AT_EOS.value)
    prompts.write_completions(config, _WORKDIR.value, tokenizer, run, output, resume=_RESUME.value,
                              primary=primary, say=say)


def sample_unconditional(config, output: str, primary: bool, say) -> None:
    """Draws --num_samples samples (after --prompt_ids, if given) into `output`, resuming after the samples
    it already holds."""
    total, prompt = _NUM_SAMPLES.value or 16, parse_prompt(_PROMPT_IDS.value)
    settings = config.sampler_settings

    def describe(loaded, left: int) -> str:
        return (f"sampling {left} of {total} samples into {output} (checkpoint step {loaded.step}): "
                f"{settings.sampler}, T={settings.steps}, at most {settings.max_nfe} NFE per sample, batches "
                f"of {settings.batch_size}")

    def draw(loaded, done: int):
        batches = inference.sample_batches(loaded, total, start=done, prompt=prompt, history=_HISTORY.value)
        return inference.sample_records(batches, inference.text_decoder(config, warn=say),
                                        label=settings.guidance_label)

    def check(sampler) -> None:
        sampler.check(settings, settings.batch_size, config.data.length, prompt=prompt)

    inference.write_samples(config, _WORKDIR.value, output, total=total, draw=draw, describe=describe,
                            resume=_RESUME.value, primary=primary, check=check, say=say)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    _DISTRIBUTED.initialize()
    primary = jax.process_index() == 0  # With several processes, process 0 alone writes and reports.
    say = print if primary else (lambda *args, **kwargs: None)
    cli.sole_writer(_OUTPUT.value, workdir=False)
    config = cli.sampling_config(_CONFIG, _WORKDIR.value)
    if text_prompts_given():
        sample_text(config, _OUTPUT.value, primary, say)
        return
    if _CHAT.value or _TOKENIZER.value or _GEN_LENGTH.value:
        raise UsageError("--chat, --tokenizer and --gen_length belong to text prompts (--prompt, "
                         "--prompt_file)")
    sample_unconditional(config, _OUTPUT.value, primary, say)


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
