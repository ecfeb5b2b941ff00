"""Accuracy against NFE on lm-evaluation-harness tasks: one model under T x (omega, S) samplers.

    python launch/harness_sweep.py --workdir=runs/llada --tasks=gsm8k --num_fewshot=5 \
        --steps=32,64,128,256 --correctors=1:0,1:1,2:2 --output_dir=results/gsm8k_sweep

Each row evaluates the task with the block sampler (gen_length 256 in blocks of 32, greedy, low-confidence
remasking; T steps, the corrector run S times after every omega-th step; S = 0 is the plain block sampler)
through the `proseco_jax` lm-eval model, and records the task's score and the mean NFE per answer. Writes
OUTPUT_DIR/harness_sweep.json (resumed: rows already there are kept), harness_sweep.md (the table) and
harness_sweep.png (score against NFE, one line per (omega, S)), and prints the table.
"""

import json
import os
import sys

import lm_eval
from absl import flags
from lm_eval.tasks import TaskManager
from lm_eval.utils import simple_parse_args_string

from proseco_jax import cli, inference, prompts
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import harness, harness_sweep
from proseco_jax.evaluation.harness_sweep import parse_grid

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained or converted workdir.", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Hugging Face tokenizer directory (default: the "
                                 "workdir's).")
_TASKS = flags.DEFINE_list("tasks", None, "lm-eval task names (gsm8k, humaneval, mbpp, minerva_math, ...).",
                           required=True)
_INCLUDE_PATH = flags.DEFINE_string("include_path", "", "Directory of extra task YAML files.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples (default: the task's).")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate the first N documents of each task only.")
_METRIC = flags.DEFINE_string("metric", "", "Result key to report, e.g. 'exact_match,strict-match' "
                              "(default: the task's first metric).")
_STEPS = flags.DEFINE_string("steps", "32,64,128,256", "T values (multiples of gen_length / block_length).")
_CORRECTORS = flags.DEFINE_string("correctors", "1:0,1:1,2:2", "(omega, S) pairs as omega:S.")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 256, "Generated positions per answer.", lower_bound=1)
_BLOCK_LENGTH = flags.DEFINE_integer("block_length", 32, "Block sampler's block length.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Answers per compiled sampler call.", lower_bound=1)
_MODEL_ARGS = flags.DEFINE_string("model_args", "", "More model arguments, k=v,... (corrector_rule=top_k).")
_CHAT = flags.DEFINE_bool("apply_chat_template", False, "Prompt through the tokenizer's chat template "
                          "(few-shot examples as turns).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the JSON, table and plot go.", required=True)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    # This directory holds evaluate.py, which would shadow the `evaluate` package that lm-eval's code tasks
    # import while they run.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    grid = parse_grid(_STEPS.value, _CORRECTORS.value)
    extra = simple_parse_args_string(_MODEL_ARGS.value)
    taken = sorted(set(extra) & {"gen_length", "batch_size", "steps", "corrector_every", "corrector_steps"})
    if taken:
        raise UsageError(f"--model_args may not set {', '.join(taken)}: the sweep's own flags set them")
    loaded = inference.load_workdir(_WORKDIR.value)
    tokenizer = prompts.chat_tokenizer(loaded.config, _WORKDIR.value, _TOKENIZER.value)
    manager = TaskManager(include_path=_INCLUDE_PATH.value or None)

    def evaluate(steps: int, every: int, corrector_steps: int):
        sampling = {"block_length": _BLOCK_LENGTH.value, **extra, "steps": steps, "corrector_every": every,
                    "corrector_steps": corrector_steps}
        model = harness.ProsecoLM(loaded, tokenizer, gen_length=_GEN_LENGTH.value,
                                  batch_size=_BATCH_SIZE.value, **sampling)
        out = lm_eval.simple_evaluate(model=model, tasks=_TASKS.value, num_fewshot=_NUM_FEWSHOT.value,
                                      limit=_LIMIT.value, task_manager=manager, log_samples=False,
                                      apply_chat_template=_CHAT.value, fewshot_as_multiturn=_CHAT.value,
                                      confirm_run_unsafe_code=True, bootstrap_iters=0)
        return out["results"], model.nfe_records

    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    base = os.path.join(_OUTPUT_DIR.value, "harness_sweep")
    run_key = json.dumps({"tasks": _TASKS.value, "num_fewshot": _NUM_FEWSHOT.value, "limit": _LIMIT.value,
                          "chat": _CHAT.value, "model_args": _MODEL_ARGS.value}, sort_keys=True)
    rows = harness_sweep.run(evaluate, grid, base + ".json", _METRIC.value, run_key)
    table = harness_sweep.format_table(rows)
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(table + "\n")
    harness_sweep.plot(rows, base + ".png")
    print(table)
    print(f"wrote {base}.json, {base}.md and {base}.png", flush=True)


if __name__ == "__main__":
    cli.run(main)
