"""The same sampler driven from Python: one jitted model call per step, decisions synced to the host.

This is how a direct port of the PyTorch reference runs (a Python loop over T steps, `if cache is None`
and `torch.allclose` checks that wait for the device, and a Python loop over corrector iterations). It
exists as the baseline for benchmarks against the scan sampler in loop.py. Both use the same pieces, the
same key splits and the same cache rules, so for the same rng they give the same tokens and NFE counts
(the model runs here as its own program, so XLA may round its logits differently from the fused scan; a
token can then differ where two draws are within that rounding, which the tests' models never hit).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from proseco_jax.sampling.loop import (
    ApplyFn,
    ModelCall,
    Plan,
    SampleOutput,
    SamplerState,
    _infill_pair,
    make_plan,
)
from proseco_jax.sampling.settings import SamplerSettings
from proseco_jax.sampling.unmasking import StepContext
from proseco_jax.schedules import Schedule


@functools.lru_cache(maxsize=32)
def _jitted_model(apply_fn: ApplyFn, with_params: bool, plan: Plan):
    return jax.jit(ModelCall(apply_fn, with_params, plan))


@functools.partial(jax.jit, static_argnames=("plan",))
def _initial(plan: Plan, rng, prompt, infill):
    return plan.initial(rng, prompt, infill)


@functools.partial(jax.jit, static_argnames=("plan",))
def _begin_step(plan: Plan, state: SamplerState, step):
    ctx = plan.context(step)
    rng, prior_key, corrector_key, unmask_key = plan.step_keys(state.rng)
    need = ~state.logp_valid & state.active
    return state.replace(rng=rng), ctx, (prior_key, corrector_key, unmask_key), need, plan.sigma(ctx.t)


@functools.partial(jax.jit, static_argnames=("plan",))
def _take_prediction(plan: Plan, state: SamplerState, logits, need):
    fresh = plan.log_probs(logits)
    return state.replace(
        logp=jnp.where(need[:, None, None], fresh, state.logp),
        predictor_nfe=state.predictor_nfe + need,
        model_calls=state.model_calls + 1,
    )


@functools.partial(jax.jit, static_argnames=("plan",))
def _corrector_start(plan: Plan, state: SamplerState, fixed, ctx: StepContext, prior_key):
    corrector = plan.corrector()
    return corrector.initial(prior_key, state.tokens, state.logp, fixed), plan.movable(fixed, ctx)


@functools.partial(jax.jit, static_argnames=("plan",))
def _corrector_sigma(plan: Plan, j):
    return plan.corrector_sigma(j)


@functools.partial(jax.jit, static_argnames=("plan",))
def _corrector_take(plan: Plan, c, logits, need):
    return jnp.where(need[:, None, None], plan.log_probs(logits), c)


@functools.partial(jax.jit, static_argnames=("plan",))
def _corrector_update(plan: Plan, key, j, c, y, movable, active):
    y_next = plan.corrector().update(jax.random.fold_in(key, j), c, y, movable)
    return y_next, jnp.any(y_next != y, axis=-1) & active


@functools.partial(jax.jit, static_argnames=("plan",))
def _corrector_finish(plan: Plan, state: SamplerState, y, c, movable, nfe, calls):
    active = state.active
    return state.replace(
        tokens=plan.corrector().merge(state.tokens, y, movable, active),
        logp=jnp.where(active[:, None, None], c, state.logp),
        corrector_nfe=nfe,
        model_calls=calls,
    )


@functools.partial(jax.jit, static_argnames=("plan",))
def _unmask(plan: Plan, state: SamplerState, fixed, ctx: StepContext, unmask_key):
    before = state.tokens
    after, conf = plan.unmasker()(unmask_key, before, state.logp, state.conf, fixed, ctx)
    return plan.finish_step(state, before, after, conf, ctx)


def sample_hostloop(
    apply_fn: ApplyFn,
    settings: SamplerSettings,
    schedule: Schedule,
    rng: jax.Array,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    prompt: jax.Array | None = None,
    infill: tuple[jax.Array, jax.Array] | None = None,
    params: Any = None,
    return_history: bool = False,
) -> SampleOutput:
    """Same arguments and result as `loop.sample`, driven step by step from Python."""
    plan = make_plan(settings, schedule, batch_size=batch_size, length=length, mask_id=mask_id, prompt=prompt,
                     infill=infill)
    model = _jitted_model(apply_fn, params is not None, plan)
    corrector = plan.corrector()
    state, fixed = _initial(plan, rng, prompt, _infill_pair(infill))
    history = []
    for step in range(settings.steps):
        state, ctx, (prior_key, corrector_key, unmask_key), need, sigma = _begin_step(plan, state, step)
        if bool(jnp.any(need)):
            state = _take_prediction(plan, state, model(params, state.tokens, sigma), need)
        if corrector is not None and bool(ctx.run_corrector) and bool(jnp.any(state.active)):
            state = _host_correct(plan, model, params, state, fixed, ctx, prior_key, corrector_key)
        state = _unmask(plan, state, fixed, ctx, unmask_key)
        if return_history:
            history.append(state.tokens)
    return SampleOutput(
        tokens=state.tokens,
        nfe=state.predictor_nfe + state.corrector_nfe,
        predictor_nfe=state.predictor_nfe,
        corrector_nfe=state.corrector_nfe,
        model_calls=state.model_calls,
        history=jnp.stack(history) if return_history else None,
    )


def _host_correct(plan: Plan, model, params, state: SamplerState, fixed, ctx: StepContext, prior_key,
                  corrector_key) -> SamplerState:
    corrector = plan.corrector()
    y, movable = _corrector_start(plan, state, fixed, ctx, prior_key)
    c, need = state.logp, state.active
    nfe, calls = state.corrector_nfe, state.model_calls
    for j in range(corrector.steps):
        if bool(jnp.any(need)):
            c = _corrector_take(plan, c, model(params, y, _corrector_sigma(plan, j)), need)
            nfe, calls = nfe + need, calls + 1
        y, need = _corrector_update(plan, corrector_key, j, c, y, movable, state.active)
        if corrector.stops_at_fixed_point and not bool(jnp.any(need)):
            break
    return _corrector_finish(plan, state, y, c, movable, nfe, calls)
