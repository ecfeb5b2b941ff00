"""The scan sampler's twin driven from Python: the benchmark's baseline for what fusing T steps buys.

`sample_hostloop` runs the same plan, the same initial state and the same per-step function
(`loop.sampler_step`) as `loop.sample`, jitted once per (model, plan) and dispatched T times from a Python
loop, the way a direct port of the PyTorch reference steps its sampler; only the `lax.scan` that fuses the
steps into one program is missing. For the same rng it therefore gives the same tokens, NFE counts, model
calls and history as `sample`, which the tests check."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from proseco_jax.config_base import Sampling
from proseco_jax.sampling.loop import (
    ApplyFn,
    SampleOutput,
    initial_state,
    make_plan,
    sample_output,
    sampler_step,
)
from proseco_jax.schedules import Schedule

_initial_jit = jax.jit(initial_state, static_argnames=("plan",))
_step_jit = jax.jit(sampler_step, static_argnames=("apply_fn", "plan"))


def sample_hostloop(
    apply_fn: ApplyFn,
    params: Any,
    settings: Sampling,
    rng: jax.Array,
    *,
    schedule: Schedule,
    mask_id: int,
    batch_size: int,
    length: int,
    mesh: Mesh | None = None,
    prompt: jax.Array | None = None,
    infill: tuple[jax.Array, jax.Array] | None = None,
    return_history: bool = False,
) -> SampleOutput:
    """Same arguments and result as `loop.sample`, one dispatch of the jitted step per unmasking step."""
    plan = make_plan(settings, schedule, batch_size=batch_size, length=length, mask_id=mask_id, mesh=mesh,
                     prompt=prompt, infill=infill)
    state, fixed = _initial_jit(plan, rng, prompt, infill)
    history = []
    for step in range(plan.settings.steps):
        # An int32 array, not a Python int: one trace serves every step.
        state = _step_jit(apply_fn, plan, params, fixed, state, jnp.asarray(step, jnp.int32))
        if return_history:
            history.append(state.tokens)
    return sample_output(state, jnp.stack(history) if return_history else None)
