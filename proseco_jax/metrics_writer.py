"""Where training figures go: `metrics.jsonl` (one JSON object per log step), TensorBoard event files
(written by tensorboardX, no TensorFlow needed) and a one-line progress report on stdout.

On resume, `metrics.jsonl` is cut back to its longest prefix of strictly increasing steps up to the
restored checkpoint's (rows past the checkpoint, rows repeated or out of order, as writers that raced on the
workdir once left them, and a last line torn by a failed write all go), so the file reads exactly as if the
run had never been interrupted. A figure that is not finite (a diverged loss) is written
as null (`fileio`'s JSON policy).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from tensorboardX import SummaryWriter

from proseco_jax import fileio


class MetricsWriter:
    """Writes metrics of process 0; other processes get a writer that does nothing."""

    def __init__(self, workdir: str, *, resume_step: int, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._start_time = time.time()
        self._start_step = resume_step
        if not enabled:
            return
        self._truncate_after(resume_step)
        self._tb_dir = os.path.join(workdir, "tensorboard")
        with self._writing_events():
            self._tb = SummaryWriter(self._tb_dir)

    @contextlib.contextmanager
    def _writing_events(self) -> Iterator[None]:
        """TensorBoard's writes, a failure naming its directory (tensorboardX's errors name no file)."""
        try:
            yield
        except OSError as e:
            raise fileio.write_error(e, self._tb_dir) from e

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = increasing_prefix(f.readlines(), step)
        fileio.atomic_write_text(self.path, "".join(kept))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one JSON line for `step` and mirrors the scalars to TensorBoard."""
        if not self.enabled:
            return
        record = fileio.jsonable({"step": int(step), **metrics})
        fileio.append_text(self.path, fileio.json_line(record))
        if self._tb is not None:
            with self._writing_events():
                for k, v in record.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self._tb.add_scalar(k, v, step)
                self._tb.flush()

    def progress(self, step: int, metrics: dict[str, Any]) -> None:
        """Prints `step N/T | loss .. | tok/s .. | ETA ..` (process 0 only)."""
        if not self.enabled:
            return
        done = step - self._start_step
        elapsed = time.time() - self._start_time
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        parts = [f"step {step}/{self.total_steps}"]
        for key in ("loss", "mdm_loss", "corrector_loss", "val_bits_per_token"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4f}")
        if "tokens_per_sec" in metrics:
            parts.append(f"{float(metrics['tokens_per_sec']):,.0f} tok/s")
        parts.append(f"ETA {_format_seconds(eta)}")
        print(" | ".join(parts), flush=True, file=sys.stdout)

    def close(self) -> None:
        if self._tb is not None:
            with self._writing_events():
                self._tb.close()


def increasing_prefix(lines: list[str], last_step: int) -> list[str]:
    """The leading `lines` (JSON records with a `step`) whose steps increase strictly and stay within
    `last_step`; blank lines are skipped, and the first line that breaks the order or does not parse ends
    the prefix."""
    kept, previous = [], -1
    for line in lines:
        if not line.strip():
            continue
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            break
        if not isinstance(step, int) or not previous < step <= last_step:
            break
        kept.append(line if line.endswith("\n") else line + "\n")
        previous = step
    return kept


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
