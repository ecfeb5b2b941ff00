"""EleutherAI's lm-evaluation-harness with this project's model registered as `proseco_jax`.

lm-eval finds models only in its own registry (it reads no plugins), so this binary registers the model
(`proseco_jax/evaluation/harness.py`) and then runs lm-eval's command line with the arguments as given:

    python launch/harness.py --model proseco_jax --model_args workdir=runs/llada,steps=256,corrector_steps=2 \
        --tasks gsm8k --num_fewshot 5 --batch_size 8 --output_path results/gsm8k --log_samples

A local task: `--tasks harness_tiny_gen --include_path tests/data/harness_task` (run from the repository
root). From Python, `import proseco_jax.evaluation.harness` registers it for `lm_eval.simple_evaluate(
model="proseco_jax", ...)`. A bad model argument or workdir is one `error: ...` line and exit code 2.
"""

import os
import sys

from lm_eval.__main__ import cli_evaluate

from proseco_jax import cli, fileio
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import harness  # noqa: F401 - registers the `proseco_jax` model with lm-eval.


def main() -> None:
    # This directory holds evaluate.py, which would shadow the `evaluate` package that lm-eval's code tasks
    # import while they run (nothing imported it yet).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        cli_evaluate()
    except UsageError as e:
        cli.fail(str(e))
    except OSError as e:  # A failed write (a full disk): one line, as every binary reports it.
        failure = fileio.write_failure(e)
        if failure is None:
            raise
        cli.fail(f"cannot write {failure.path or 'an output'} ({failure.reason})", code=1)


if __name__ == "__main__":
    sys.exit(main())
