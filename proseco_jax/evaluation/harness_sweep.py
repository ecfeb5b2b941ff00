"""Inference-time compute scaling on the harness's benchmarks: one model evaluated by lm-eval under a grid of
samplers (T unmasking steps x (omega, S) corrector schedules; S = 0 is the plain block sampler), each row
the task's score beside the mean NFE per answer, written as JSON, a Markdown table and the paper's plot of
accuracy against NFE. Rows already in the JSON are kept, so a stopped sweep continues where it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from proseco_jax import fileio
from proseco_jax.errors import UsageError

Row = dict[str, Any]
KEY = ("task", "steps", "corrector_every", "corrector_steps")


def parse_grid(steps: str, correctors: str) -> list[tuple[int, int, int]]:
    """(T, omega, S) of every row: T from "32,64" times (omega, S) from "1:0,1:2" ("omega:S" pairs)."""
    try:
        ts = [int(t) for t in steps.split(",") if t]
        pairs = [tuple(int(v) for v in pair.split(":")) for pair in correctors.split(",") if pair]
    except ValueError:
        raise UsageError(f"bad grid: steps {steps!r} (e.g. 32,64) or correctors {correctors!r} "
                         "(omega:S pairs, e.g. 1:0,1:2)") from None
    if not ts or not pairs or any(len(p) != 2 or p[0] < 1 or p[1] < 0 for p in pairs) or min(ts) < 1:
        raise UsageError(f"bad grid: steps {steps!r} or correctors {correctors!r} (omega >= 1, S >= 0)")
    return [(t, every, s) for every, s in pairs for t in ts]


def score_of(task_results: Mapping[str, Any], metric: str) -> tuple[str, float]:
    """(metric name, value) of one task's lm-eval results: `metric` ("exact_match,strict-match"), or the
    first numeric entry that is not a standard error."""
    if metric:
        if metric not in task_results:
            raise UsageError(f"metric {metric!r} is not among the task's {sorted(task_results)}")
        return metric, float(task_results[metric])
    for name, value in task_results.items():
        if "stderr" not in name and isinstance(value, (int, float)) and not isinstance(value, bool):
            return name, float(value)
    raise UsageError(f"the task's results hold no score: {sorted(task_results)}")


def run(evaluate: Callable[[int, int, int], tuple[dict[str, Any], list[dict[str, Any]]]],
        grid: Sequence[tuple[int, int, int]], path: str, metric: str = "", run_key: str = "",
        say: Callable[[str], None] = print) -> list[Row]:
    """Rows of the grid: `evaluate(T, omega, S)` -> (lm-eval's results per task, the model's NFE records);
    the JSON `path` is rewritten (atomically) after each scored grid point. `run_key` names what else decides
    the scores (tasks, shots, limit, metric): a grid point counts as done only for rows of the same key, so a
    rerun with other tasks scores them instead of reporting the old ones."""
    try:
        rows: list[Row] = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else []
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the sweep's rows {path} ({e}); move it away to start over") from None
    done = {(r.get("run", ""), *(r[k] for k in KEY[1:])) for r in rows}
    for steps, every, corrector_steps in grid:
        if (run_key, steps, every, corrector_steps) in done:
            continue
        results, records = evaluate(steps, every, corrector_steps)
        for task, task_results in results.items():
            name, value = score_of(task_results, metric)
            mine = [r for r in records if r.get("task") == task]  # A group's own row has no NFE of its own.
            nfe = float(np.mean([r["nfe"] for r in mine])) if mine else float("nan")
            rows.append({"run": run_key, "task": task, "steps": steps, "corrector_every": every,
                         "corrector_steps": corrector_steps, "metric": name, "score": value, "nfe": nfe})
            say(f"{task}: T={steps} omega={every} S={corrector_steps}: {name} {value:.4f} at {nfe:.1f} NFE")
        fileio.atomic_write_json(path, rows)
    return [r for r in rows if r.get("run", "") == run_key]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, by task, then (omega, S), then T."""
    lines = ["| task | T | omega | S | NFE | metric | score |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: tuple(r[k] for k in ("task", "corrector_every", "corrector_steps",
                                                              "steps"))):
        lines.append(f"| {r['task']} | {r['steps']} | {r['corrector_every']} | {r['corrector_steps']} | "
                     f"{r['nfe']:.1f} | {r['metric']} | {r['score']:.4f} |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: str) -> None:
    """Score against NFE, one panel per task, one line per (omega, S) through its T values (a `Figure`
    without pyplot, as report.plot)."""
    tasks = sorted({r["task"] for r in rows})
    fig = Figure(figsize=(5 * len(tasks), 4))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        for every, s in sorted({(r["corrector_every"], r["corrector_steps"]) for r in mine}):
            line = sorted((r for r in mine if (r["corrector_every"], r["corrector_steps"]) == (every, s)),
                          key=lambda r: r["nfe"])
            label = "block sampler (S=0)" if s == 0 else f"ProSeCo omega={every}, S={s}"
            ax.plot([r["nfe"] for r in line], [r["score"] for r in line], marker="o", label=label)
            for r in line:
                ax.annotate(f"T={r['steps']}", (r["nfe"], r["score"]), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set(title=task, xlabel="NFE per answer", ylabel=mine[0]["metric"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
