"""The sampler: one `lax.scan` over T steps of "predict, maybe correct, unmask", compiled once per plan.

Per step i, with times = linspace(1, eps, T + 1), t = times[i] and s = times[i+1]:
    logp = log p_theta(. | z, sigma(t))    cached: no call for a sample whose z did not change (see below)
    if S > 0 and (i+1) % omega == 0 and i+1 >= start:
        y = corrector fixed point from logp (corrector.py);  z = where(z != MASK, y, z);  logp = c
    z = unmask(z, logp)                     (unmasking.py: MDLM, ReMDM, confidence-ordered, LLaDA blocks)
`make_plan` validates the inputs and builds the unmasking strategy (the sampler's entry in samplers.py) and
the corrector once from the settings; `sampler_step` is that one step, which both the scan and the optional
Python loop (`host_loop=True`) run; `run` and `lower` are the whole program, which `sampler.Sampler` calls.
What is reused, and why: the predictor's log-probs of z stay valid while z does not change, so the next
step's predictor call is skipped for that sample. After a corrector call the cache holds the corrector's
log-probs of its last input y (the argmax guess it computed them from), which drive this step's unmasking;
the next step reuses them if unmasking then left z unchanged, where a fresh predictor call would have
evaluated z itself. That is what the authors' sampler does at batch size 1. The batch runs together: the
model is called when any sample needs it (a `lax.cond` on a device boolean), and a sample that needs no
call keeps its cached log-probs, so every sample follows the trajectory it would follow alone. NFE is
counted per sample, as the reference counts it for its batch: one predictor NFE per call on a changed z,
one corrector NFE per call on a changed y (always for the first corrector iteration of a call).
`model_calls` counts the batched calls actually made. Sample b of a call carries its own key,
fold_in(rng, first_index + b), split once per step, and every random draw of that sample comes from it
(ops.py): a sample is a function of `rng` and its index in the run, the same whatever batch, batch size or
mesh it is drawn in, so a run resumed at any sample writes what the uninterrupted run would have (only
`stop_on_eos="batch"`, which stops a batch together, ties samples to their batch).
The sampler reads `vocab_size` ids of the logits ([0, mask_id] by default; a model whose [MASK] lies inside
a larger table, as LLaDA's, passes the whole table) and never proposes [MASK] itself.
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

from proseco_jax.config_base import Sampling
from proseco_jax.sampling import guidance as cfg_guidance
from proseco_jax.sampling import ops, samplers
from proseco_jax.sampling.corrector import Corrector
from proseco_jax.sampling.guidance import Guidance
from proseco_jax.sampling.samplers import Unmasker
from proseco_jax.sampling.settings import SamplingError, check_inputs
from proseco_jax.sampling.unmasking import StepContext, stop_at_eos
from proseco_jax.schedules import Schedule

# apply_fn(params, tokens int32 [B, L], sigma float32 [B]) -> logits [B, L, >= vocab_size]. params is a traced
# argument of the compiled sampler; apply_fn is part of its cache key, so keep the same object across calls.
ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

# Mesh axes the batch is split over (those of them a mesh has); other axes (tensor) see the whole batch.
BATCH_AXES = ("data", "fsdp")


@flax.struct.dataclass
class Inputs:
    """What conditions one call, traced (its values never recompile; its shapes are part of the plan)."""

    prompt: jax.Array | None = None  # int32 [P] or [B, P]: a fixed prefix
    infill: tuple[jax.Array, jax.Array] | None = None  # (tokens int32 [B, L], keep bool [B, L])


NO_INPUTS = Inputs()  # an unconditional call


@flax.struct.dataclass
class SamplerState:
    """The carry of one step."""

    tokens: jax.Array  # int32 [B, L]: z
    rng: jax.Array  # PRNG keys [B]: sample b's own key, split once per step
    logp: jax.Array  # [B, L, vocab_size]: cached log-probs that drive the next unmasking
    logp_valid: jax.Array  # bool [B]: logp is current for tokens (no model call needed)
    active: jax.Array  # bool [B]: False once a sample stopped at end-of-sequence
    conf: jax.Array  # float32 [B, L]: ReMDM-conf scores (-inf where masked)
    predictor_nfe: jax.Array  # int32 [B]
    corrector_nfe: jax.Array  # int32 [B]
    step_nfe: jax.Array  # int32 [B]: NFE with a guided (two-evaluation) call counted once, as the authors
    model_calls: jax.Array  # int32 []: batched model calls made
    # Guidance that mixes two models: the cached conditional and unconditional log-probs [B, L, vocab_size]
    # that `logp` combines (None otherwise).
    cond_logp: jax.Array | None = None
    uncond_logp: jax.Array | None = None


@flax.struct.dataclass
class SampleOutput:
    tokens: jax.Array  # int32 [B, L]
    nfe: jax.Array  # int32 [B]: predictor_nfe + corrector_nfe
    predictor_nfe: jax.Array  # int32 [B]
    corrector_nfe: jax.Array  # int32 [B]
    step_nfe: jax.Array  # int32 [B]: nfe with a guided call counted once (the authors' count; = nfe unguided)
    model_calls: jax.Array  # int32 []: batched model calls (the reference's NFE for this batch)
    history: jax.Array | None = None  # int32 [T, B, L]: z after every step, when asked


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one run (a jit cache key): resolved settings, shapes and the strategies."""

    settings: Sampling
    schedule: Schedule
    batch_size: int
    length: int
    mask_id: int
    vocab_size: int  # ids read from the logits, [MASK] among them
    prompt_len: int
    unmasker: Unmasker
    corrector: Corrector | None
    block_length: int  # tokens per block; the whole generated region unless the block sampler splits it
    eos_id: int  # a sample stops once a just-closed block ends in this id (-1: never)
    batch_sharding: NamedSharding | None  # the batch split over a mesh's BATCH_AXES (None: unsharded)
    guidance: Guidance | None = None  # classifier-free guidance (None: the model is called without labels)

    @property
    def mixes(self) -> bool:
        """Predictions combine a conditional and an unconditional call (guidance.py)."""
        return self.guidance is not None and self.guidance.mixes

    def labels(self, label: int | None) -> jax.Array | None:
        """int32 [B] of `label` (None: the model is called without labels)."""
        return None if label is None else jnp.full((self.batch_size,), label, jnp.int32)

    @property
    def dtype(self) -> Any:
        return jnp.float64 if self.settings.precision == "float64" else jnp.float32

    @property
    def steps_per_block(self) -> int:
        return self.settings.steps // ((self.length - self.prompt_len) // self.block_length)

    def times(self) -> np.ndarray:
        """float32 [T + 1]: a host constant, so every step indexes the same values."""
        return np.linspace(1.0, self.settings.eps, self.settings.steps + 1).astype(np.float32)

    def context(self, step: jax.Array | int) -> StepContext:
        s = self.settings
        step = jnp.asarray(step, jnp.int32)
        times = jnp.asarray(self.times())
        per_block = self.steps_per_block
        in_block = step % per_block
        run = (self.corrector is not None) & ((in_block + 1) % s.corrector_every == 0)
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
        taus = np.linspace(1.0, self.settings.eps, self.corrector.steps + 1).astype(np.float32)
        return self.sigma(jnp.asarray(taus)[j])

    def movable(self, fixed: jax.Array, ctx: StepContext) -> jax.Array:
        """bool [B, L]: positions the corrector may change (LLaDA: the generated part up to this block)."""
        return ~fixed & (jnp.arange(self.length) < ctx.block_end)

    def initial(self, rng: jax.Array, inputs: Inputs, first_index: jax.Array | int = 0
                ) -> tuple[SamplerState, jax.Array]:
        """The all-[MASK] start with prompt and infill tokens in place, and the fixed mask bool [B, L];
        sample b's key is fold_in(rng, first_index + b)."""
        prompt, infill = inputs.prompt, inputs.infill
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
            rng=ops.sample_keys(rng, first_index, self.batch_size),
            logp=jnp.zeros(shape + (self.vocab_size,), self.dtype),
            logp_valid=jnp.zeros((self.batch_size,), bool),
            active=jnp.ones((self.batch_size,), bool),
            conf=jnp.full(shape, -jnp.inf, jnp.float32),
            predictor_nfe=jnp.zeros((self.batch_size,), jnp.int32),
            corrector_nfe=jnp.zeros((self.batch_size,), jnp.int32),
            step_nfe=jnp.zeros((self.batch_size,), jnp.int32),
            model_calls=jnp.zeros((), jnp.int32),
        )
        if self.mixes:
            state = state.replace(cond_logp=state.logp, uncond_logp=state.logp)
        return state, fixed

    def finish_step(self, state: SamplerState, before: jax.Array, after: jax.Array, conf: jax.Array,
                    ctx: StepContext) -> SamplerState:
        """Applies the unmasking result (active samples only), the cache flag and the end-of-sequence stop."""
        active = state.active
        after = jnp.where(active[:, None], after, before)
        conf = jnp.where(active[:, None], conf, state.conf)
        valid = jnp.all(after == before, axis=-1)
        if self.eos_id >= 0:
            after, active = stop_at_eos(after, active, ctx, self.eos_id, self.mask_id,
                                        whole_batch=self.settings.stop_on_eos == "batch")
        return state.replace(tokens=after, conf=conf, logp_valid=valid, active=active)


def make_plan(settings: Sampling, schedule: Schedule, *, batch_size: int, length: int, mask_id: int,
              vocab_size: int | None = None, mesh: Mesh | None = None,
              inputs: Inputs = NO_INPUTS, num_classes: int = 0) -> Plan:
    """Validates the inputs (raising SamplingError, a ValueError), builds the strategies once and lays the
    batch over the mesh's BATCH_AXES. `settings.sampler` becomes behaviour through its traits
    (`settings.kind`, `config_base.SAMPLERS`) and its `samplers.UNMASKERS` entry. vocab_size: ids read
    from the logits, [MASK] among them (None: mask_id + 1). num_classes: the label classes of a
    label-conditioned model (0: none), which `settings.guidance_label` must lie among."""
    s = settings.resolved()
    kind = s.kind
    vocab_size = int(mask_id) + 1 if vocab_size is None else vocab_size
    prompt_len = check_inputs(s, batch_size=batch_size, length=length, mask_id=mask_id, prompt=inputs.prompt,
                              infill=inputs.infill, block_length=s.block_length if kind.blocked else None,
                              vocab_size=vocab_size)
    corrector = None
    if s.num_corrector_steps > 0:
        # Confidence-ordered samplers restore committed tokens in the corrector's start, as LLaDA does.
        keep_visible = s.parameterization == "subs" or kind.confidence_ordered
        corrector = Corrector(mask_id=mask_id, steps=s.num_corrector_steps, rule=s.corrector_rule,
                              top_k=s.corrector_top_k, prior=s.corrector_prior, nucleus_p=s.nucleus_p,
                              keep_visible=keep_visible)
    return Plan(
        # The batch size is the argument's; the section's own would only split the compilation cache.
        settings=s.replace(batch_size=int(batch_size)),
        schedule=schedule,
        batch_size=int(batch_size),
        length=int(length),
        mask_id=int(mask_id),
        vocab_size=int(vocab_size),
        prompt_len=prompt_len,
        unmasker=samplers.UNMASKERS[s.sampler](s, schedule, int(mask_id)),
        corrector=corrector,
        block_length=s.block_length if kind.blocked else int(length) - prompt_len,
        eos_id=s.eos_id if kind.blocked else -1,
        batch_sharding=_batch_sharding(mesh, int(batch_size)),
        guidance=_guidance(s, num_classes),
    )


def _guidance(s: Sampling, num_classes: int) -> Guidance | None:
    problem = s.guidance_problem(num_classes)
    if problem:
        raise SamplingError(problem)
    if s.guidance_label < 0:
        return None
    return Guidance(scale=float(s.guidance_scale), label=s.guidance_label, null_label=int(num_classes),
                    corrector=s.guidance_corrector)


def _log_probs(apply_fn: ApplyFn, plan: Plan, params: Any, tokens: jax.Array, sigma: jax.Array,
               labels: jax.Array | None = None) -> jax.Array:
    """[N, L, vocab_size] log-probs of the model at tokens [N, L] ([MASK] at -inf), with labels int32 [N]
    when given; checks the logits' shape while tracing."""
    if labels is None:
        logits = apply_fn(params, tokens, sigma)
    else:
        logits = apply_fn(params, tokens, sigma, labels=labels)
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape or logits.shape[-1] < plan.vocab_size:
        raise SamplingError(f"apply_fn returned logits of shape {list(logits.shape)}; expected "
                            f"[{tokens.shape[0]}, {tokens.shape[1]}, >= {plan.vocab_size}] "
                            "(the real tokens and [MASK])")
    return ops.log_probs_without_mask(logits, plan.mask_id, plan.dtype, plan.vocab_size)


def sampler_step(apply_fn: ApplyFn, plan: Plan, params: Any, fixed: jax.Array, state: SamplerState,
          step: jax.Array) -> SamplerState:
    """Unmasking step `step` (int32 []); every decision is a device boolean, so one trace serves all T."""
    ctx = plan.context(step)
    rng, prior_key, corrector_key, unmask_key = ops.split_rows(state.rng, 4)
    tokens = state.tokens

    need = ~state.logp_valid & state.active
    sigma = plan.sigma(ctx.t)
    if plan.mixes:
        # The caches of both models are kept, and a sample that needs no call combines them again (after a
        # corrector step the conditional cache holds the corrector's log-probs), as the authors' cache does.
        cond, uncond = _keep(need, jax.lax.cond(
            jnp.any(need),
            lambda: cfg_guidance.paired_log_probs(_labelled(apply_fn, plan, params), tokens, sigma,
                                                  plan.guidance),
            lambda: (state.cond_logp, state.uncond_logp),
        ), (state.cond_logp, state.uncond_logp))
        state = state.replace(cond_logp=cond, uncond_logp=uncond,
                              logp=cfg_guidance.combine(cond, uncond, plan.guidance.scale))
    else:
        label = None if plan.guidance is None else plan.guidance.one_model_label
        fresh = jax.lax.cond(
            jnp.any(need),
            lambda: _log_probs(apply_fn, plan, params, tokens, sigma, plan.labels(label)),
            lambda: state.logp,
        )
        state = state.replace(logp=_keep(need, fresh, state.logp))
    state = state.replace(
        rng=rng,
        predictor_nfe=state.predictor_nfe + need * (2 if plan.mixes else 1),
        step_nfe=state.step_nfe + need,
        model_calls=state.model_calls + jnp.any(need),
    )
    if plan.corrector is not None:
        state = jax.lax.cond(
            ctx.run_corrector & jnp.any(state.active),
            lambda st: _correct(apply_fn, plan, params, fixed, st, ctx, prior_key, corrector_key),
            lambda st: st,
            state,
        )
    before = state.tokens
    after, conf = plan.unmasker(unmask_key, before, state.logp, state.conf, fixed, ctx)
    out = plan.finish_step(state, before, after, conf, ctx)
    s = plan.settings
    if s.nucleus_refilter and s.nucleus_p < 1.0:
        # The reference caches the nucleus-filtered log-probs of a predictor step (a corrector step leaves
        # its own, unfiltered), so a later step that reuses the cache filters them once more.
        corrected = (ctx.run_corrector & jnp.any(state.active)) if plan.corrector is not None else False
        filtered = ops.nucleus_log_probs(state.logp, s.nucleus_p)
        out = out.replace(logp=jnp.where(corrected, out.logp, filtered))
    return out


def _labelled(apply_fn: ApplyFn, plan: Plan, params: Any) -> cfg_guidance.LabelledLogProbs:
    return lambda tokens, sigma, labels: _log_probs(apply_fn, plan, params, tokens, sigma, labels)


def _keep(need: jax.Array, fresh: Any, cached: Any) -> Any:
    """Per sample (need bool [B]), the fresh log-probs [B, L, V] (a pytree of them) or the cached ones."""
    return jax.tree.map(lambda f, c: jnp.where(need[:, None, None], f, c), fresh, cached)


def _correct(apply_fn: ApplyFn, plan: Plan, params: Any, fixed: jax.Array, state: SamplerState,
             ctx: StepContext, prior_key: jax.Array, corrector_key: jax.Array) -> SamplerState:
    """The corrector's fixed-point loop as a `lax.while_loop` of at most S iterations.

    Under guidance (guidance.py) it starts from the conditional prediction and calls the conditional model
    only ("conditional", the authors'), or starts from the guided prediction and calls both ("guided").
    """
    corrector, g = plan.corrector, plan.guidance
    active = state.active
    movable = plan.movable(fixed, ctx)
    conditional_start = plan.mixes and g.corrector == "conditional"
    prior = state.cond_logp if conditional_start else state.logp
    y0 = corrector.initial(prior_key, state.tokens, prior, fixed)
    mixes = g is not None and g.corrector_mixes
    calls_per_eval = 2 if mixes else 1

    def evaluate(y, j):
        """(log-probs that drive the corrector, the model caches they came from) of y."""
        sigma = plan.corrector_sigma(j)
        if mixes:
            cond, uncond = cfg_guidance.paired_log_probs(_labelled(apply_fn, plan, params), y, sigma, g)
            return cfg_guidance.combine(cond, uncond, g.scale), (cond, uncond)
        label = None if g is None else g.one_model_label
        return _log_probs(apply_fn, plan, params, y, sigma, plan.labels(label)), ()

    caches = (state.cond_logp, state.uncond_logp) if mixes else ()

    def body(carry):
        j, y, c, parts, need, nfe, step_nfe, calls = carry
        fresh = jax.lax.cond(jnp.any(need), lambda: evaluate(y, j), lambda: (c, parts))
        c, parts = _keep(need, fresh, (c, parts))
        y_next = corrector.update(ops.fold_in_rows(corrector_key, j), c, y, movable)
        changed = jnp.any(y_next != y, axis=-1) & active
        return (j + 1, y_next, c, parts, changed, nfe + need * calls_per_eval, step_nfe + need,
                calls + jnp.any(need))

    def cond(carry):
        j, need = carry[0], carry[4]
        more = jnp.any(need) if corrector.stops_at_fixed_point else True
        return (j < corrector.steps) & more

    init = (jnp.zeros((), jnp.int32), y0, state.logp, caches, active, state.corrector_nfe, state.step_nfe,
            state.model_calls)
    _, y, c, parts, _, nfe, step_nfe, calls = jax.lax.while_loop(cond, body, init)
    out = state.replace(
        tokens=corrector.merge(state.tokens, y, movable, active),
        logp=_keep(active, c, state.logp),
        corrector_nfe=nfe,
        step_nfe=step_nfe,
        model_calls=calls,
    )
    if mixes:
        cond_logp, uncond_logp = _keep(active, parts, (state.cond_logp, state.uncond_logp))
        out = out.replace(cond_logp=cond_logp, uncond_logp=uncond_logp)
    elif conditional_start:  # The corrector's conditional log-probs replace the conditional cache.
        out = out.replace(cond_logp=_keep(active, c, state.cond_logp))
    return out


def _batch_sharding(mesh: Mesh | None, batch_size: int) -> NamedSharding | None:
    if mesh is None:
        return None
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    shards = math.prod(mesh.shape[a] for a in axes)
    if batch_size % shards:
        raise SamplingError(f"batch_size={batch_size} is not divisible by the {shards} shards of mesh "
                            f"axes {axes}")
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def _constrain(x: jax.Array, plan: Plan) -> jax.Array:
    """x [B, ...] laid out over the plan's batch sharding along B."""
    if plan.batch_sharding is None:
        return x
    spec = PartitionSpec(*plan.batch_sharding.spec, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(plan.batch_sharding.mesh, spec))


def initial_state(plan: Plan, rng: jax.Array, inputs: Inputs = NO_INPUTS,
                  first_index: jax.Array | int = 0) -> tuple[SamplerState, jax.Array]:
    """The state before step 0 (samples first_index.. of the run of `rng`) and the fixed mask bool [B, L],
    laid out over the batch sharding."""
    state, fixed = plan.initial(rng, inputs, first_index)
    # Every per-sample field, so that a step's inputs are laid out as its outputs and the jitted step of
    # the host loop compiles once.
    per_sample = ("tokens", "rng", "logp", "logp_valid", "active", "conf", "predictor_nfe", "corrector_nfe",
                  "step_nfe") + (("cond_logp", "uncond_logp") if plan.mixes else ())
    state = state.replace(**{name: _constrain(getattr(state, name), plan) for name in per_sample})
    return state, _constrain(fixed, plan)


def sample_output(state: SamplerState, history: jax.Array | None) -> SampleOutput:
    """The result of the state after step T - 1 (and history int32 [T, B, L] when kept)."""
    return SampleOutput(
        tokens=state.tokens,
        nfe=state.predictor_nfe + state.corrector_nfe,
        predictor_nfe=state.predictor_nfe,
        corrector_nfe=state.corrector_nfe,
        step_nfe=state.step_nfe,
        model_calls=state.model_calls,
        history=history,
    )


def _scan(rng: jax.Array, first_index: jax.Array, inputs: Inputs, params: Any, *, apply_fn: ApplyFn,
          plan: Plan, return_history: bool) -> SampleOutput:
    state, fixed = initial_state(plan, rng, inputs, first_index)

    def body(st, i):
        st = sampler_step(apply_fn, plan, params, fixed, st, i)
        return st, (st.tokens if return_history else None)

    state, history = jax.lax.scan(body, state, jnp.arange(plan.settings.steps, dtype=jnp.int32))
    out = sample_output(state, history)
    return out.replace(tokens=_constrain(out.tokens, plan), nfe=_constrain(out.nfe, plan))


_sample_jit = jax.jit(_scan, static_argnames=("apply_fn", "plan", "return_history"))
_initial_jit = jax.jit(initial_state, static_argnames=("plan",))
_step_jit = jax.jit(sampler_step, static_argnames=("apply_fn", "plan"))


def run(apply_fn: ApplyFn, plan: Plan, params: Any, rng: jax.Array, inputs: Inputs = NO_INPUTS, *,
        first_index: int = 0, history: bool = False, host_loop: bool = False) -> SampleOutput:
    """Draws plan.batch_size sequences of plan.length tokens; see the module docstring.

    Args:
      apply_fn: the model, apply_fn(params, tokens int32 [B, L], sigma float32 [B]) -> logits
        [B, L, >= plan.vocab_size]; part of the compiled program's cache key, so keep the same object.
      plan: `make_plan` of the settings and of these inputs' shapes.
      params: its parameters (any pytree, None for a model without), a traced argument.
      rng: PRNG key of the run.
      inputs: the prompt and infill the plan was made for.
      first_index: the run's index of the batch's first sample: sample b draws from fold_in(rng,
        first_index + b) (a traced value: any index reuses the compiled program).
      history: also return z after every step, int32 [T, B, L].
      host_loop: dispatch the same jitted step T times from Python instead of fusing the steps in one
        `lax.scan`, the way a direct port of the PyTorch reference steps its sampler (the benchmark's
        baseline for what the scan buys). Same tokens, NFE counts, model calls and history.
    """
    first = jnp.asarray(first_index, jnp.int32)
    if not host_loop:
        return _sample_jit(rng, first, inputs, params, apply_fn=apply_fn, plan=plan, return_history=history)
    state, fixed = _initial_jit(plan, rng, inputs, first)
    iterates = []
    for step in range(plan.settings.steps):
        # An int32 array, not a Python int: one trace serves every step.
        state = _step_jit(apply_fn, plan, params, fixed, state, jnp.asarray(step, jnp.int32))
        if history:
            iterates.append(state.tokens)
    return sample_output(state, jnp.stack(iterates) if history else None)


def lower(apply_fn: ApplyFn, plan: Plan, params: Any, rng: Any) -> jax.stages.Lowered:
    """The program `run` runs (without prompt, infill or history), lowered for abstract params and rng
    (ShapeDtypeStructs with shardings), so that it compiles ahead of time for a target that need not be
    attached (`proseco_jax/aot.py`)."""
    # Abstract too, laid out as rng: nothing may run on the devices of a target that is not attached.
    first_index = jax.ShapeDtypeStruct((), jnp.int32, sharding=getattr(rng, "sharding", None))
    return _sample_jit.lower(rng, first_index, NO_INPUTS, params, apply_fn=apply_fn, plan=plan,
                             return_history=False)
