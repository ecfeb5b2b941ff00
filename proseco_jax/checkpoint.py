"""Checkpoints: an orbax `CheckpointManager` (async) holding the train state and the data-iterator state.

Both items are saved under one step directory, so a resumed run continues with exactly the batches an
uninterrupted run would have seen. Orbax writes each step to a temporary directory and renames it when
complete, so a run killed mid-save resumes from the last complete checkpoint. Every leaf of the state is a
global array; on restore, leaves come back with the shardings of the current mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from proseco_jax.errors import UsageError

STATE = "state"
DATA_ITER = "data_iter"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


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


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any | None, step: int | None = None
) -> tuple[int, Any]:
    """Restores (step, state) from the latest (or given) step; the data iterator is restored in place."""
    from grain.checkpoint import CheckpointRestore

    step = manager.latest_step() if step is None else step
    if step is None:
        raise UsageError(f"no checkpoint found under {manager.directory}")
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items[DATA_ITER] = CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return step, restored[STATE]


def restore_params(workdir: str, abstract_params: Any, *, use_ema: bool = True) -> tuple[int, Any]:
    """Loads only the (EMA) parameters of the latest checkpoint, for sampling and evaluation.

    abstract_params: ShapeDtypeStructs (with shardings) of the params tree.
    """
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise UsageError(f"no checkpoint found: {checkpoint_dir(workdir)} does not exist")
    manager = make_manager(workdir, keep=1, read_only=True)
    step = manager.latest_step()
    if step is None:
        raise UsageError(f"no checkpoint found under {checkpoint_dir(workdir)}")
    key = "ema_params" if use_ema else "params"
    # Restore just one subtree: orbax's partial restore takes a tree with the wanted leaves only.
    target = {key: abstract_params}
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.PyTreeRestore(
                        item=target, restore_args=jax.tree.map(_restore_args, target), partial_restore=True
                    )
                }
            ),
        )
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise UsageError(
            f"checkpoint at step {step} under {checkpoint_dir(workdir)} does not match the "
            f"config's model: {str(e).splitlines()[0][:200]}"
        ) from None
    return step, restored[STATE][key]


def _restore_args(leaf: jax.ShapeDtypeStruct) -> ocp.ArrayRestoreArgs:
    return ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape, dtype=leaf.dtype)
