"""Unmasking strategies: one step from z_t to z_s given the (predictor or corrector) log-probs.

MDLM's ancestral step and ReMDM's remasking share one posterior (ReMDM's): with remasking rate sigma,
    masked z_t:   q(v)      = p_theta(v) (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)
                  q([MASK]) = (1 - alpha_s - sigma alpha_t) / (1 - alpha_t)
    visible z_t:  keep the token w.p. 1 - sigma, remask w.p. sigma,
so sigma = 0 is MDLM: a masked token unmasks w.p. (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from
nucleus_p(p_theta). ReMDM picks sigma per step: cap min(eta, sigma_max), rescale eta sigma_max, conf
softmax(-p of each visible token's value at its unmasking) sigma_max, with sigma_max = min(1, (1-alpha_s) /
alpha_t); loop runs MDLM on its own linear schedule until alpha = alpha_on at t_on, remasks at that level
with sigma = eta until t_off, then runs MDLM again. The last step uses alpha_s = 1 and sigma = 0 so
no [MASK] survives (the references instead stop at alpha(eps) and, in ReMDM, add an argmax pass).
Confidence-ordered unmasking (MaskGIT/LLaDA "low confidence") proposes a token everywhere and commits the
ceil(remaining / steps left) most confident masked positions of the current block: an even split of each
block over its steps, as LLaDA's `get_num_transfer_tokens`. Every draw is a Gumbel-max in the sampling
precision (ops.py says why float64 matters).
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp

from proseco_jax.sampling import ops
from proseco_jax.schedules import Schedule


@flax.struct.dataclass
class StepContext:
    """Where the loop stands at unmasking step i (every field a scalar array)."""

    step: jax.Array  # int32: i in [0, T)
    t: jax.Array  # float32: time of z_t on linspace(1, eps, T + 1)
    s: jax.Array  # float32: time after the step
    is_last: jax.Array  # bool: i == T - 1
    steps_left_in_block: jax.Array  # int32: steps of the current block from this one on (>= 1)
    block_end: jax.Array  # int32: positions < block_end may be unmasked now
    block_done: jax.Array  # bool: this step closes its block
    run_corrector: jax.Array  # bool: the corrector runs before this step's unmasking


@dataclasses.dataclass(frozen=True)
class Remasking:
    """MDLM (strategy "none") and ReMDM ("cap", "rescale", "conf", "loop") behind the posterior above."""

    schedule: Schedule
    mask_id: int
    strategy: str = "none"
    eta: float = 0.0
    t_on: float = 0.55
    t_off: float = 0.05
    alpha_on: float = 0.9
    nucleus_p: float = 1.0

    def __call__(self, keys: jax.Array, tokens: jax.Array, logp: jax.Array, conf: jax.Array,
                 fixed: jax.Array, ctx: StepContext) -> tuple[jax.Array, jax.Array]:
        """keys [B] (sample b's key), tokens int32 [B, L], logp [B, L, vocab_size] ([MASK] at -inf), conf
        float32 [B, L], fixed bool [B, L] -> (tokens, conf)."""
        dtype = logp.dtype
        mask_t, mask_s, alpha_t, sigma = self._rates(tokens, conf, fixed, ctx)
        mask_t, mask_s, alpha_t = (jnp.asarray(x, dtype) for x in (mask_t, mask_s, alpha_t))
        sigma = jnp.where(fixed, 0.0, jnp.broadcast_to(jnp.asarray(sigma, dtype), tokens.shape))
        sigma = jnp.where(ctx.is_last, 0.0, sigma)
        logp = ops.nucleus_log_probs(logp, self.nucleus_p)
        column = jnp.arange(logp.shape[-1])  # [MASK] may lie inside the table, ids above it real
        unmask = (mask_t - mask_s + sigma * alpha_t) / mask_t
        stay = jnp.maximum(mask_s - sigma * alpha_t, 0.0) / mask_t
        masked_q = jnp.where(column == self.mask_id, jnp.log(stay)[..., None],
                             logp + jnp.log(unmask)[..., None])
        visible_q = jnp.where(column == tokens[..., None], jnp.log1p(-sigma)[..., None],
                              jnp.where(column == self.mask_id, jnp.log(sigma)[..., None], ops.NEG_INF))
        is_masked = tokens == self.mask_id
        drawn = ops.gumbel_argmax(keys, jnp.where(is_masked[..., None], masked_q, visible_q))
        new = jnp.where(fixed, tokens, drawn)
        if self.strategy == "conf":
            # A token's score is -p(its value) when it is unmasked; remasked tokens drop out of the softmax.
            unmasked_now = is_masked & (new != self.mask_id)
            p_new = jnp.exp(ops.token_log_prob(logp, new)).astype(conf.dtype)
            conf = jnp.where(unmasked_now, -p_new, jnp.where(new == self.mask_id, -jnp.inf, conf))
        return new, conf

    def _rates(self, tokens, conf, fixed, ctx):
        """(1 - alpha_t, 1 - alpha_s, alpha_t, sigma) of this step; sigma is a scalar or [B, L]."""
        schedule = self.schedule
        mask_t = schedule.mask_prob(ctx.t)
        mask_s = jnp.where(ctx.is_last, 0.0, schedule.mask_prob(ctx.s))
        alpha_t = schedule.alpha(ctx.t)
        if self.strategy == "none":
            return mask_t, mask_s, alpha_t, 0.0
        # Remasking at most what the posterior allows keeps the mask probability of masked tokens >= 0.
        sigma_max = jnp.where(alpha_t > 0, jnp.minimum(1.0, mask_s / jnp.maximum(alpha_t, 1e-30)), 1.0)
        if self.strategy == "cap":
            return mask_t, mask_s, alpha_t, jnp.minimum(self.eta, sigma_max)
        if self.strategy == "rescale":
            return mask_t, mask_s, alpha_t, self.eta * sigma_max
        if self.strategy == "conf":
            eligible = (tokens != self.mask_id) & ~fixed & (conf > -jnp.inf)
            score = jnp.where(eligible, conf, -jnp.inf)
            top = jnp.max(score, axis=-1, keepdims=True)
            weight = jnp.where(eligible, jnp.exp(score - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
            eta = weight / jnp.maximum(jnp.sum(weight, axis=-1, keepdims=True), 1e-30)
            return mask_t, mask_s, alpha_t, eta * sigma_max
        return self._loop_rates(ctx)

    def _loop_rates(self, ctx):
        t, s, a_on = ctx.t, ctx.s, self.alpha_on
        before = t > self.t_on
        after = t <= self.t_off
        mask_t = jnp.where(before, 1.0 - (1.0 - t) * a_on / (1.0 - self.t_on),
                           jnp.where(after, t * (1.0 - a_on) / self.t_off, 1.0 - a_on))
        mask_s = jnp.where(before, 1.0 - (1.0 - s) * a_on / (1.0 - self.t_on),
                           jnp.where(after, s * (1.0 - a_on) / self.t_off, 1.0 - a_on))
        mask_s = jnp.where(ctx.is_last, 0.0, mask_s)
        sigma = jnp.where(before | after, 0.0, self.eta)
        return mask_t, mask_s, 1.0 - mask_t, sigma


@dataclasses.dataclass(frozen=True)
class ConfidenceOrdered:
    """Commits the most confident proposals among the masked positions of the current block.

    remasking "random" ranks the proposals by a uniform draw instead (LLaDA's generator). A positive
    `threshold` also commits every proposal whose probability reaches it (LLaDA's threshold mode); the
    even split still runs alongside, so a block always completes within its steps and a step that finds
    nothing masked left costs no model call.
    """

    mask_id: int
    temperature: float = 1.0
    nucleus_p: float = 1.0
    remasking: str = "low_confidence"
    threshold: float = 0.0

    def __call__(self, keys: jax.Array, tokens: jax.Array, logp: jax.Array, conf: jax.Array,
                 fixed: jax.Array, ctx: StepContext) -> tuple[jax.Array, jax.Array]:
        """keys [B] (sample b's key), tokens int32 [B, L], logp [B, L, vocab_size] -> (tokens, conf
        unchanged)."""
        proposal_key, rank_key = ops.split_rows(keys, 2)
        proposal = ops.gumbel_argmax(proposal_key, ops.nucleus_log_probs(logp, self.nucleus_p),
                                     self.temperature)
        # Confidence is the model's probability of the proposal, as LLaDA's low-confidence remasking.
        confidence = jnp.exp(ops.token_log_prob(logp, proposal))
        if self.remasking == "low_confidence":
            rank = confidence
        else:
            rank = ops.uniform_rows(rank_key, tokens.shape)
        position = jnp.arange(tokens.shape[-1])
        candidate = (tokens == self.mask_id) & ~fixed & (position < ctx.block_end)
        remaining = jnp.sum(candidate, axis=-1)
        count = (remaining + ctx.steps_left_in_block - 1) // ctx.steps_left_in_block
        commit = ops.top_k_mask(jnp.where(candidate, rank, -jnp.inf), count)
        if self.threshold > 0:
            commit = commit | (candidate & (confidence >= self.threshold))
        return jnp.where(commit, proposal, tokens), conf


def stop_at_eos(tokens: jax.Array, active: jax.Array, ctx: StepContext, eos_id: int, mask_id: int,
                whole_batch: bool = False) -> tuple[jax.Array, jax.Array]:
    """Freezes each sample whose just-closed block ends in eos_id; its remaining masks become eos_id.

    With `whole_batch`, samples stop only together, once every active one has ended a block in eos_id
    (the reference's evaluation). tokens int32 [B, L], active bool [B] -> (tokens, active).
    """
    last = jax.lax.dynamic_index_in_dim(tokens, ctx.block_end - 1, axis=1, keepdims=False)
    stop = active & ctx.block_done & (last == eos_id)
    if whole_batch:
        stop = active & jnp.all(stop | ~active)
    tokens = jnp.where(stop[:, None] & (tokens == mask_id), eos_id, tokens)
    return tokens, active & ~stop
