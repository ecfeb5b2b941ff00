"""The sampler: one `lax.scan` over T steps of "predict, maybe correct, unmask", compiled once per setting.

Per step i, with times = linspace(1, eps, T + 1), t = times[i] and s = times[i+1]:
    logp = log p_theta(. | z, sigma(t))    cached: the model runs only for samples whose z changed
    if S > 0 and (i+1) % omega == 0 and i+1 >= start:
        y = corrector fixed point from logp (corrector.py);  z = where(z != MASK, y, z);  logp = c
    z = unmask(z, logp)                     (unmasking.py: MDLM, ReMDM, confidence-ordered, LLaDA blocks)
The batch runs together: the model is called when any sample needs it (a `lax.cond` on a device boolean),
and a sample whose input did not change keeps its cached log-probs, so every sample follows the trajectory
it would follow alone. NFE is counted per sample, as the reference counts it for its batch: one predictor
NFE per call on a changed z, one corrector NFE per call on a changed y (always for the first corrector
iteration of a call). `model_calls` counts the batched calls actually made. Sampling is deterministic given
`rng` and independent of how the batch is sharded (jax's partitionable threefry).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from proseco_jax.sampling import ops
from proseco_jax.sampling.corrector import Corrector
from proseco_jax.sampling.settings import SamplerSettings, SamplingError, check_inputs
from proseco_jax.sampling.unmasking import (
    ConfidenceOrdered,
    Remasking,
    StepContext,
    stop_at_eos,
)
from proseco_jax.schedules import Schedule

# apply_fn(tokens int32 [B, L], sigma float32 [B]) -> logits float32 [B, L, V+1], or with `params`
# given: apply_fn(params, tokens, sigma), so that parameters are jit arguments rather than constants.
ApplyFn = Callable[..., jax.Array]


@flax.struct.dataclass
class SamplerState:
    """The scan carry."""

    tokens: jax.Array  # int32 [B, L]: z
    rng: jax.Array  # PRNG key, split once per step
    logp: jax.Array  # [B, L, V+1]: cached log-probs that drive the next unmasking
    logp_valid: jax.Array  # bool [B]: logp is current for tokens (no model call needed)
    active: jax.Array  # bool [B]: False once a sample stopped at end-of-sequence
    conf: jax.Array  # float32 [B, L]: ReMDM-conf scores (-inf where masked)
    predictor_nfe: jax.Array  # int32 [B]
    corrector_nfe: jax.Array  # int32 [B]
    model_calls: jax.Array  # int32 []: batched model calls made


@flax.struct.dataclass
class SampleOutput:
    tokens: jax.Array  # int32 [B, L]
    nfe: jax.Array  # int32 [B]: predictor_nfe + corrector_nfe
    predictor_nfe: jax.Array  # int32 [B]
    corrector_nfe: jax.Array  # int32 [B]
    model_calls: jax.Array  # int32 []: batched model calls (the reference's NFE for this batch)
    history: jax.Array | None = None  # int32 [T, B, L]: z after every step, when asked


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one run: settings, shapes and the strategies built from them."""

    settings: SamplerSettings
    schedule: Schedule
    batch_size: int
    length: int
    mask_id: int
    prompt_len: int

    @property
    def dtype(self):
        return jnp.float64 if self.settings.precision == "float64" else jnp.float32

    @property
    def block_length(self) -> int:
        s = self.settings
        return s.block_length if s.sampler == "llada_block" else self.length - self.prompt_len

    @property
    def steps_per_block(self) -> int:
        if not self.settings.confidence_ordered:
            return self.settings.steps
        return self.settings.steps // ((self.length - self.prompt_len) // self.block_length)

    @property
    def stops_at_eos(self) -> bool:
        return self.settings.sampler == "llada_block" and self.settings.eos_id >= 0

    @property
    def keep_visible(self) -> bool:
        # Confidence-ordered samplers restore committed tokens in the corrector's start, as LLaDA does.
        return self.settings.parameterization == "subs" or self.settings.confidence_ordered

    def unmasker(self) -> Remasking | ConfidenceOrdered:
        s = self.settings
        if s.confidence_ordered:
            return ConfidenceOrdered(self.mask_id, s.temperature, s.nucleus_p)
        strategy = s.remdm_strategy if s.sampler == "remdm" else "none"
        return Remasking(self.schedule, self.mask_id, strategy, s.remdm_eta, s.remdm_t_on, s.remdm_t_off,
                         s.remdm_alpha_on, s.nucleus_p)

    def corrector(self) -> Corrector | None:
        s = self.settings
        if s.num_corrector_steps == 0:
            return None
        return Corrector(self.mask_id, s.num_corrector_steps, s.corrector_rule, s.corrector_top_k,
                         s.corrector_prior, s.nucleus_p, self.keep_visible)

    def times(self) -> np.ndarray:
        """float32 [T + 1]; a host constant, so both loops index the same values."""
        return np.linspace(1.0, self.settings.eps, self.settings.steps + 1).astype(np.float32)

    def context(self, step: jax.Array | int) -> StepContext:
        s = self.settings
        step = jnp.asarray(step, jnp.int32)
        times = jnp.asarray(self.times())
        per_block = self.steps_per_block
        in_block = step % per_block
        run = (s.num_corrector_steps > 0) & ((in_block + 1) % s.corrector_every == 0)
        return StepContext(
            step=step,
            t=times[step],
            s=times[step + 1],
            is_last=step == s.steps - 1,
            steps_left_in_block=per_block - in_block,
            block_end=jnp.minimum(self.prompt_len + (step // per_block + 1) * self.block_length, self.length),
            block_done=in_block == per_block - 1,
            run_corrector=run & (step + 1 >= s.corrector_start),
        )

    def sigma(self, t: jax.Array) -> jax.Array:
        """float32 [B] time conditioning."""
        return jnp.full((self.batch_size,), self.schedule.sigma(t), jnp.float32)

    def corrector_sigma(self, j: jax.Array | int) -> jax.Array:
        """float32 [B]: iteration j is conditioned on linspace(1, eps, S + 1)[j], as the reference does."""
        taus = np.linspace(1.0, self.settings.eps, self.settings.num_corrector_steps + 1).astype(np.float32)
        return self.sigma(jnp.asarray(taus)[j])

    def movable(self, fixed: jax.Array, ctx: StepContext) -> jax.Array:
        """bool [B, L]: positions the corrector may change (LLaDA: the generated part up to this block)."""
        return ~fixed & (jnp.arange(self.length) < ctx.block_end)

    def log_probs(self, logits: jax.Array) -> jax.Array:
        return ops.model_log_probs(logits, self.mask_id, self.dtype)

    def initial(self, rng: jax.Array, prompt: jax.Array | None,
                infill: tuple[jax.Array, jax.Array] | None) -> tuple[SamplerState, jax.Array]:
        """The all-[MASK] start with prompt and infill tokens in place, and the fixed mask bool [B, L]."""
        shape = (self.batch_size, self.length)
        tokens = jnp.full(shape, self.mask_id, jnp.int32)
        fixed = jnp.zeros(shape, bool)
        if prompt is not None:
            prompt = jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (self.batch_size, self.prompt_len))
            tokens = tokens.at[:, : self.prompt_len].set(prompt)
            fixed = fixed.at[:, : self.prompt_len].set(True)
        if infill is not None:
            keep = jnp.asarray(infill[1], bool) & ~fixed
            tokens = jnp.where(keep, jnp.asarray(infill[0], jnp.int32), tokens)
            fixed = fixed | keep
        state = SamplerState(
            tokens=tokens,
            rng=rng,
            logp=jnp.zeros(shape + (self.mask_id + 1,), self.dtype),
            logp_valid=jnp.zeros((self.batch_size,), bool),
            active=jnp.ones((self.batch_size,), bool),
            conf=jnp.full(shape, -jnp.inf, jnp.float32),
            predictor_nfe=jnp.zeros((self.batch_size,), jnp.int32),
            corrector_nfe=jnp.zeros((self.batch_size,), jnp.int32),
            model_calls=jnp.zeros((), jnp.int32),
        )
        return state, fixed

    def step_keys(self, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(next rng, prior key, corrector key, unmasking key): the same split in both loops."""
        rng, prior_key, corrector_key, unmask_key = jax.random.split(rng, 4)
        return rng, prior_key, corrector_key, unmask_key

    def finish_step(self, state: SamplerState, before: jax.Array, after: jax.Array, conf: jax.Array,
                    ctx: StepContext) -> SamplerState:
        """Applies the unmasking result (active samples only), the cache flag and the end-of-sequence stop."""
        active = state.active
        after = jnp.where(active[:, None], after, before)
        conf = jnp.where(active[:, None], conf, state.conf)
        valid = jnp.all(after == before, axis=-1)
        if self.stops_at_eos:
            after, active = stop_at_eos(after, active, ctx, self.settings.eos_id, self.mask_id)
        return state.replace(tokens=after, conf=conf, logp_valid=valid, active=active)


@dataclasses.dataclass(frozen=True)
class ModelCall:
    """Calls apply_fn (with or without params) and checks the logits' shape while tracing."""

    apply_fn: ApplyFn
    with_params: bool
    plan: Plan

    def __call__(self, params: Any, tokens: jax.Array, sigma: jax.Array) -> jax.Array:
        logits = self.apply_fn(params, tokens, sigma) if self.with_params else self.apply_fn(tokens, sigma)
        p = self.plan
        if logits.shape[:2] != tokens.shape or logits.ndim != 3 or logits.shape[-1] < p.mask_id + 1:
            raise SamplingError(f"apply_fn returned logits of shape {list(logits.shape)}; expected "
                                f"[{tokens.shape[0]}, {tokens.shape[1]}, {p.mask_id + 1}] "
                                "(V real tokens + [MASK])")
        return logits


def _device_step(plan: Plan, model: ModelCall, params: Any, fixed: jax.Array, state: SamplerState,
                 step: jax.Array, return_history: bool) -> tuple[SamplerState, jax.Array | None]:
    """One scan step; every decision is a device boolean."""
    ctx = plan.context(step)
    rng, prior_key, corrector_key, unmask_key = plan.step_keys(state.rng)
    tokens = state.tokens

    need = ~state.logp_valid & state.active
    fresh = jax.lax.cond(
        jnp.any(need),
        lambda: plan.log_probs(model(params, tokens, plan.sigma(ctx.t))),
        lambda: state.logp,
    )
    state = state.replace(
        rng=rng,
        logp=jnp.where(need[:, None, None], fresh, state.logp),
        predictor_nfe=state.predictor_nfe + need,
        model_calls=state.model_calls + jnp.any(need),
    )

    corrector = plan.corrector()
    if corrector is not None:
        state = jax.lax.cond(
            ctx.run_corrector & jnp.any(state.active),
            lambda st: _device_correct(plan, corrector, model, params, fixed, st, ctx, prior_key,
                                       corrector_key),
            lambda st: st,
            state,
        )
    before = state.tokens
    after, conf = plan.unmasker()(unmask_key, before, state.logp, state.conf, fixed, ctx)
    state = plan.finish_step(state, before, after, conf, ctx)
    return state, (state.tokens if return_history else None)


def _device_correct(plan: Plan, corrector: Corrector, model: ModelCall, params: Any, fixed: jax.Array,
                    state: SamplerState, ctx: StepContext, prior_key: jax.Array,
                    corrector_key: jax.Array) -> SamplerState:
    """The corrector's fixed-point loop as a `lax.while_loop` of at most S iterations."""
    active = state.active
    movable = plan.movable(fixed, ctx)
    y0 = corrector.initial(prior_key, state.tokens, state.logp, fixed)

    def body(carry):
        j, y, c, need, nfe, calls = carry
        fresh = jax.lax.cond(
            jnp.any(need),
            lambda: plan.log_probs(model(params, y, plan.corrector_sigma(j))),
            lambda: c,
        )
        c = jnp.where(need[:, None, None], fresh, c)
        y_next = corrector.update(jax.random.fold_in(corrector_key, j), c, y, movable)
        changed = jnp.any(y_next != y, axis=-1) & active
        return j + 1, y_next, c, changed, nfe + need, calls + jnp.any(need)

    def cond(carry):
        j, need = carry[0], carry[3]
        more = jnp.any(need) if corrector.stops_at_fixed_point else True
        return (j < corrector.steps) & more

    init = (jnp.zeros((), jnp.int32), y0, state.logp, active, state.corrector_nfe, state.model_calls)
    _, y, c, _, nfe, calls = jax.lax.while_loop(cond, body, init)
    return state.replace(
        tokens=corrector.merge(state.tokens, y, movable, active),
        logp=jnp.where(active[:, None, None], c, state.logp),
        corrector_nfe=nfe,
        model_calls=calls,
    )


def _constrain(x: jax.Array, batch_sharding: NamedSharding | None) -> jax.Array:
    if batch_sharding is None:
        return x
    spec = PartitionSpec(*batch_sharding.spec, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(batch_sharding.mesh, spec))


def _sample_core(rng, prompt, infill, params, *, apply_fn: ApplyFn, plan: Plan, with_params: bool,
                 return_history: bool, batch_sharding: NamedSharding | None) -> SampleOutput:
    model = ModelCall(apply_fn, with_params, plan)
    state, fixed = plan.initial(rng, prompt, infill)
    state = state.replace(**{name: _constrain(getattr(state, name), batch_sharding)
                             for name in ("tokens", "logp", "logp_valid", "active", "conf")})
    fixed = _constrain(fixed, batch_sharding)
    state, history = jax.lax.scan(
        lambda st, i: _device_step(plan, model, params, fixed, st, i, return_history),
        state,
        jnp.arange(plan.settings.steps, dtype=jnp.int32),
    )
    out = SampleOutput(
        tokens=state.tokens,
        nfe=state.predictor_nfe + state.corrector_nfe,
        predictor_nfe=state.predictor_nfe,
        corrector_nfe=state.corrector_nfe,
        model_calls=state.model_calls,
        history=history,
    )
    if batch_sharding is not None:
        out = out.replace(tokens=_constrain(out.tokens, batch_sharding),
                          nfe=_constrain(out.nfe, batch_sharding))
    return out


_sample_jit = jax.jit(
    _sample_core, static_argnames=("apply_fn", "plan", "with_params", "return_history", "batch_sharding")
)


def make_plan(settings: SamplerSettings, schedule: Schedule, *, batch_size: int, length: int, mask_id: int,
              prompt: Any = None, infill: Any = None) -> Plan:
    """Validates the inputs (raising SamplingError, a ValueError) and returns the static plan."""
    prompt_len = check_inputs(settings, batch_size=batch_size, length=length, mask_id=mask_id, prompt=prompt,
                              infill=infill)
    return Plan(settings, schedule, int(batch_size), int(length), int(mask_id), prompt_len)


def sample(
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
    """Draws batch_size sequences of `length` tokens; see the module docstring.

    Args:
      apply_fn: the model; `apply_fn(tokens, sigma)`, or `apply_fn(params, tokens, sigma)` when params is
        given. Keep the same function object across calls: it is part of the compilation cache key.
      settings: static sampler settings (`settings_from_config`).
      schedule: the masking schedule the model was trained with.
      rng: PRNG key.
      mask_id: the [MASK] id, equal to V, the number of real tokens.
      prompt: int32 [P] or [B, P]: a fixed prefix.
      infill: (tokens int32 [B, L], keep_mask bool [B, L]): positions that keep the given tokens.
      params: optional model parameters, passed to apply_fn as a traced argument.
      return_history: also return z after every step, int32 [T, B, L].
    """
    plan = make_plan(settings, schedule, batch_size=batch_size, length=length, mask_id=mask_id, prompt=prompt,
                     infill=infill)
    return _sample_jit(rng, prompt, _infill_pair(infill), params, apply_fn=apply_fn, plan=plan,
                       with_params=params is not None, return_history=return_history, batch_sharding=None)


def sample_sharded(
    apply_fn: ApplyFn,
    settings: SamplerSettings,
    schedule: Schedule,
    rng: jax.Array,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    mesh: Mesh,
    data_axes: tuple[str, ...] = ("data", "fsdp"),
    prompt: jax.Array | None = None,
    infill: tuple[jax.Array, jax.Array] | None = None,
    params: Any = None,
    return_history: bool = False,
) -> SampleOutput:
    """`sample` with the batch sharded over the mesh axes in data_axes (those the mesh has).

    The tokens equal those of `sample` for the same rng: random draws do not depend on the sharding.
    A model that places logical sharding constraints may need the caller's mesh/rules context around this.
    """
    axes = tuple(a for a in data_axes if a in mesh.axis_names)
    shards = math.prod(mesh.shape[a] for a in axes)
    if batch_size % shards:
        raise SamplingError(f"batch_size={batch_size} is not divisible by the {shards} shards of mesh "
                            f"axes {axes}")
    plan = make_plan(settings, schedule, batch_size=batch_size, length=length, mask_id=mask_id, prompt=prompt,
                     infill=infill)
    sharding = NamedSharding(mesh, PartitionSpec(axes if axes else None))
    return _sample_jit(rng, prompt, _infill_pair(infill), params, apply_fn=apply_fn, plan=plan,
                       with_params=params is not None, return_history=return_history, batch_sharding=sharding)


def _infill_pair(infill: Any) -> tuple[jax.Array, jax.Array] | None:
    return None if infill is None else (infill[0], infill[1])
