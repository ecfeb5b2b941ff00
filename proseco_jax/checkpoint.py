"""Checkpoints: an orbax `CheckpointManager` (async) holding the train state and the data-iterator state.

Both items are saved under one step directory, so a resumed run continues with exactly the batches an
uninterrupted run would have seen. Orbax writes each step to a temporary directory and renames it when
complete, so a run killed mid-save resumes from the last complete checkpoint. Restoring walks back from the
newest step to the newest one that restores completely: a damaged step (unreadable metadata, a truncated
array file, a broken iterator file) is moved aside to `checkpoints/corrupt-STEP`, never deleted, with one
line saying why. A checkpoint whose parameters do not have the config's shapes is not damaged: that is a
`UsageError` naming the fields, and nothing is moved. Every leaf of the state is a global array; on
restore, leaves come back with the shardings of the current mesh.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from proseco_jax.errors import UsageError

STATE = "state"
DATA_ITER = "data_iter"
CORRUPT_PREFIX = "corrupt-"
# Orbax writes a step into `<step>` + this (and its items into `<item>` + this) and renames it when complete.
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def ensure_writable(directory: str, label: str) -> None:
    """Creates `directory` and proves it can be written, now, before any work (one-line UsageError)."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"{label} {directory} cannot be written: {e.strerror or e}") from None


def make_manager(workdir: str, keep: int, *, read_only: bool = False) -> ocp.CheckpointManager:
    """The manager of `workdir/checkpoints`, keeping the last `keep` steps."""
    from grain.checkpoint import CheckpointHandler as GrainHandler

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        enable_async_checkpointing=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )
    # Read-only managers restore parts of the state (EMA params only), which needs the PyTree handler;
    # it reads what the Standard handler writes.
    state_handler = ocp.PyTreeCheckpointHandler() if read_only else ocp.StandardCheckpointHandler()
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=options,
        item_handlers={STATE: state_handler, DATA_ITER: GrainHandler()},
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None) -> None:
    """Starts an async save of (state, data iterator) at `step`; returns before it is on disk."""
    from grain.checkpoint import CheckpointSave

    items = {STATE: ocp.args.StandardSave(state)}
    if data_iter is not None:
        items[DATA_ITER] = CheckpointSave(data_iter)
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:160]}"


def _param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'block_0/qkv/kernel': shape} of a params tree (arrays, ShapeDtypeStructs or orbax metadata)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _check_shapes(saved: Any, wanted: Any, step: int, directory: str) -> None:
    """UsageError naming the parameters whose saved shapes differ from the config's (or that are missing)."""
    have, want = _param_shapes(saved), _param_shapes(wanted)
    problems = [f"{k} {list(have[k])} in the checkpoint vs {list(v)} in the config"
                for k, v in want.items() if k in have and have[k] != v]
    problems += [f"{k} missing from the checkpoint" for k in want if k not in have]
    problems += [f"{k} not in the config's model" for k in have if k not in want]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UsageError(f"the checkpoint at step {step} in {directory} does not fit the config's model: "
                         f"{'; '.join(problems[:3])}{more}; use the model settings it was trained with "
                         "(its config.json) or another workdir")


def _quarantine(manager: ocp.CheckpointManager, step: int, reason: str, log: Callable[[str], None]) -> None:
    """Moves a damaged step aside (never deletes it) and tells the manager."""
    directory = str(manager.directory)
    source = os.path.join(directory, str(step))
    target = os.path.join(directory, f"{CORRUPT_PREFIX}{step}")
    suffix = 1
    while os.path.exists(target):
        target = os.path.join(directory, f"{CORRUPT_PREFIX}{step}.{suffix}")
        suffix += 1
    try:
        os.rename(source, target)
        log(f"checkpoint step {step} is damaged ({reason}); moved it to {target}")
    except OSError as e:
        log(f"checkpoint step {step} is damaged ({reason}); skipped it (could not move it: {e.strerror})")
    manager.reload()


def _walk_back(manager: ocp.CheckpointManager, wanted_params: Any, attempt: Callable[[int], Any],
               log: Callable[[str], None], move_aside: bool) -> tuple[int, Any] | None:
    """attempt(step) from the newest step down, past damaged steps (moved aside if asked, else skipped);
    None when no step restores."""
    directory = str(manager.directory)

    def damaged(step: int, reason: str) -> None:
        if move_aside:
            _quarantine(manager, step, reason, log)
        else:
            log(f"checkpoint step {step} is damaged ({reason}); trying an older one")

    for step in sorted(manager.all_steps(), reverse=True):
        try:
            saved = manager.item_metadata(step)[STATE]
            saved = saved.tree if hasattr(saved, "tree") else saved
            saved_params = saved["params"]
        except Exception as e:  # noqa: BLE001 - any failure to read a step's metadata means it is damaged.
            damaged(step, f"unreadable metadata: {_short(e)}")
            continue
        _check_shapes(saved_params, wanted_params, step, directory)
        try:
            return step, attempt(step)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - shapes fit, so a failed read is damage on disk ...
            if "structures do not match" in str(e):  # ... unless the rest of the state has another layout.
                raise UsageError(f"the checkpoint at step {step} in {directory} holds another optimizer "
                                 "state than the config's (was an optimizer setting such as train.grad_clip "
                                 "changed?); use the settings it was trained with (its config.json) or "
                                 "another workdir"
                                 ) from None
            damaged(step, _short(e))
    return None


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any | None, *,
            log: Callable[[str], None] = _log) -> tuple[int, Any] | None:
    """(step, state) of the newest intact checkpoint (its data iterator restored in place), or None when
    no step restores; damaged steps are moved aside on the way."""

    def attempt(step: int) -> Any:
        items = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})
        state = manager.restore(step, args=items)
        if data_iter is not None and step > 0:  # Step 0 (converted or initial weights) consumed no data.
            restore_iterator(os.path.join(str(manager.directory), str(step), DATA_ITER), data_iter)
        return state[STATE]

    return _walk_back(manager, abstract_state.params, attempt, log, move_aside=True)


def restore_iterator(directory: str, data_iter: Any) -> None:
    """Sets `data_iter` to the position saved in `directory`, whatever the number of processes then and now.

    Each process saved its own `process_<i>-of-<n>.json`; the input pipeline's position is global (the
    number of global batches consumed, `data/pipeline.py`), so every file holds the same state and any
    process count can resume from it.
    """
    files = sorted(glob.glob(os.path.join(directory, "process_*-of-*.json")))
    if not files:
        raise FileNotFoundError(f"no data-iterator state in {directory}")
    states = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            states.append(json.load(f))
    if any(state != states[0] for state in states[1:]):
        raise UsageError(f"the processes that wrote {directory} were at different data positions; resume "
                         f"with the same {len(files)} processes")
    data_iter.set_state(states[0])

def restore_params(workdir: str, abstract_params: Any, *, use_ema: bool = True,
                   log: Callable[[str], None] = _log) -> tuple[int, Any]:
    """Loads only the (EMA) parameters of the newest intact checkpoint, for sampling and evaluation.

    abstract_params: ShapeDtypeStructs (with shardings) of the params tree. Damaged steps are skipped
    (left where they are: training moves them aside).
    """
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise UsageError(f"no checkpoint found: {checkpoint_dir(workdir)} does not exist")
    manager = make_manager(workdir, keep=1, read_only=True)
    key = "ema_params" if use_ema else "params"
    # Restore just one subtree: orbax's partial restore takes a tree with the wanted leaves only.
    target = {key: abstract_params}

    def attempt(step: int) -> Any:
        args = ocp.args.PyTreeRestore(item=target, restore_args=jax.tree.map(_restore_args, target),
                                      partial_restore=True)
        return manager.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE][key]

    try:
        found = _walk_back(manager, abstract_params, attempt, log, move_aside=False)
    finally:
        manager.close()
    if found is None:
        raise UsageError(f"no intact checkpoint found under {checkpoint_dir(workdir)}")
    return found


def after_failed_write(workdir: str) -> str:
    """What a run whose write failed keeps in `workdir`: its partial checkpoint directories removed (a
    full disk gets their space back; the next run would remove them too), the phrase naming the newest
    complete step, e.g. 'the last good checkpoint, step 40, in W/checkpoints'."""
    directory = checkpoint_dir(workdir)
    for partial in glob.glob(os.path.join(directory, f"*{TMP_SUFFIX}*")):
        shutil.rmtree(partial, ignore_errors=True)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    steps = [int(name) for name in names if name.isdigit()]
    if not steps:
        return f"no checkpoint was written yet in {directory}"
    return f"the last good checkpoint, step {max(steps)}, in {directory}"


def _restore_args(leaf: jax.ShapeDtypeStruct) -> ocp.ArrayRestoreArgs:
    return ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape, dtype=leaf.dtype)
