"""The ProSeCo objective: MDLM's masked-diffusion loss plus a self-correction loss on the model's own outputs.

With z_t = x masked at rate 1 - alpha(t) and w(t) = -alpha'(t) / (1 - alpha(t)):

    logp1 = log_softmax(f(z_t, t))  ("subs": [MASK] forbidden, visible tokens copied; "d3pm": no copy)
    L_MDM = w(t) * -logp1[x]                          at masked positions
    y     = stop_gradient(argmax logp1)               ("all") or y at masked, x elsewhere ("masked")
    logp2 = log_softmax(f(y, t)) with [MASK] forbidden (no copy-over: every position may change)
    L_SC  = w(t) * -logp2[x]                          at all positions (weight 1 when unweighted;
                                                       -w p2[x] where y == x when errors are up-weighted)
    loss  = sum over tokens of (a L_MDM + b L_SC) / number of real tokens

Everything here is a pure function of logits, tokens and an `apply_fn`, so it runs unchanged on a mesh and
tests without a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from proseco_jax.config_base import Corrector, Diffusion
from proseco_jax.schedules import Schedule

# log-probs use a true -inf for impossible tokens: exp gives exactly 0, and no arithmetic here or in the
# sampler ever combines two infinities (the losses only gather possible tokens).
NEG_INF = -jnp.inf

# apply_fn(params, tokens [B, L] int32, sigma [B] float32, dropout_rng=None) -> logits [B, L, >= V+1].
# The one calling convention of models for losses, evaluation and samplers (`state.make_apply_fn`).
ApplyFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the loss reads from the config: the diffusion and corrector sections, the [MASK] id and the ids
    read from the logits (`Config.output_vocab_size`; None: mask_id + 1, [MASK] last)."""

    diffusion: Diffusion
    corrector: Corrector
    mask_id: int
    vocab_size: int | None = None

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.diffusion)


def sample_times(rng: jax.Array, batch: int, eps: float, antithetic: bool) -> jax.Array:
    """t [B] in [eps, 1]; antithetic draws stratify [0, 1) into B cells, one time per cell."""
    u = jax.random.uniform(rng, (batch,))
    if antithetic:
        u = jnp.mod(u / batch + jnp.arange(batch) / batch, 1.0)
    return eps + (1.0 - eps) * u


def mask_tokens(rng: jax.Array, x: jax.Array, mask_prob: jax.Array, mask_id: int) -> jax.Array:
    """z_t: each token of x [B, L] replaced by mask_id with probability mask_prob [B]."""
    masked = jax.random.uniform(rng, x.shape) < mask_prob[:, None]
    return jnp.where(masked, mask_id, x)


def log_probs_without_mask(logits: jax.Array, mask_id: int, dtype: Any = jnp.float32,
                           vocab_size: int | None = None) -> jax.Array:
    """log_softmax over ids [0, vocab_size) in `dtype` with the [MASK] logit (id mask_id) sent to -inf.

    logits [..., >= vocab_size]; vocab_size defaults to mask_id + 1 ([MASK] is the last id, as in the
    DiT's vocabulary), and columns past it (vocabulary padding) are dropped. Losses and samplers share it.
    """
    vocab_size = mask_id + 1 if vocab_size is None else vocab_size
    logits = logits[..., :vocab_size].astype(dtype)
    is_mask = jnp.arange(vocab_size) == mask_id
    return jax.nn.log_softmax(jnp.where(is_mask, NEG_INF, logits), axis=-1)


def subs_log_probs(logits: jax.Array, z: jax.Array, mask_id: int, vocab_size: int | None = None) -> jax.Array:
    """The subs parameterisation: [MASK] forbidden; visible tokens of z keep their token with prob 1."""
    logp = log_probs_without_mask(logits, mask_id, vocab_size=vocab_size)
    onehot = jax.nn.one_hot(z, logp.shape[-1], dtype=jnp.bool_)
    copied = jnp.where(onehot, 0.0, NEG_INF)
    return jnp.where((z != mask_id)[..., None], copied, logp)


def token_log_prob(logp: jax.Array, x: jax.Array) -> jax.Array:
    """logp[..., x] gathered: [B, L, V], [B, L] -> [B, L]."""
    return jnp.take_along_axis(logp, x[..., None], axis=-1)[..., 0]


def mdm_loss(logp1: jax.Array, x: jax.Array, z: jax.Array, weight: jax.Array, mask_id: int) -> jax.Array:
    """Per-token MDLM loss [B, L]: w(t) * -logp1[x] at masked positions, 0 elsewhere."""
    return jnp.where(z == mask_id, -weight[:, None] * token_log_prob(logp1, x), 0.0)


def corrector_input(
    rng: jax.Array,
    logp1: jax.Array,
    x: jax.Array,
    z: jax.Array,
    mask_id: int,
    input_mode: str,
    use_argmax: bool,
) -> jax.Array:
    """y [B, L]: the model's own pass-one prediction (no gradient flows back through it)."""
    logp1 = jax.lax.stop_gradient(logp1)
    if use_argmax:
        pred = jnp.argmax(logp1, axis=-1)
    else:
        pred = jax.random.categorical(rng, logp1, axis=-1)
    pred = pred.astype(x.dtype)
    if input_mode == "masked":
        pred = jnp.where(z == mask_id, pred, x)
    return pred


def corrector_loss(
    logp2: jax.Array, x: jax.Array, y: jax.Array, weight: jax.Array, upweight_errors: bool
) -> jax.Array:
    """Per-token corrector loss [B, L] at every position.

    weight [B] is w(t) (or ones). With upweight_errors, positions where y already equals x contribute
    -w * p2[x] (bounded) instead of -w * log p2[x], so the gradient concentrates on the model's errors.
    """
    lp = token_log_prob(logp2, x)
    if upweight_errors:
        lp = jnp.where(y != x, lp, jnp.exp(lp))
    return -weight[:, None] * lp


def _masked_mean(values: jax.Array, token_mask: jax.Array) -> jax.Array:
    return jnp.sum(values * token_mask) / jnp.maximum(jnp.sum(token_mask), 1.0)


CorrectorPass = Callable[[], tuple[jax.Array, jax.Array, jax.Array]]


def gated_corrector(corrector: Corrector, step: jax.Array, pass_two: CorrectorPass
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(b * L_SC to add to the loss, the corrector's metrics): the switch both objectives share.

    pass_two() -> scalars (L_SC, corrector_accuracy, corrector_input_accuracy). With the corrector disabled
    pass two never runs (zeros); before `corrector.start_step` it is skipped by a `lax.cond` (an early step
    costs one pass) and the loss is plain MDLM; from that step on it counts with weight b.
    """
    zero = jnp.zeros((), jnp.float32)
    if not corrector.enabled:
        sc = acc = in_acc = zero
        weight = jnp.zeros((), jnp.float32)
    elif corrector.start_step <= 0:
        sc, acc, in_acc = pass_two()
        weight = jnp.asarray(corrector.corrector_weight, jnp.float32)
    else:
        active = step >= corrector.start_step
        sc, acc, in_acc = jax.lax.cond(active, lambda: pass_two(), lambda: (zero, zero, zero))
        weight = jnp.where(active, corrector.corrector_weight, 0.0)
    metrics = {"corrector_loss": sc, "corrector_accuracy": acc, "corrector_input_accuracy": in_acc}
    return weight * sc, metrics


def drop_labels(rng: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """labels int32 [B], each replaced by `null_label` ("no label") with probability `rate`: the label
    dropout that trains one network to be both the conditional and the unconditional model (CFG)."""
    return jnp.where(jax.random.bernoulli(rng, rate, labels.shape), null_label, labels).astype(jnp.int32)


def with_labels(apply_fn: ApplyFn, labels: jax.Array | None) -> ApplyFn:
    """apply_fn with labels int32 [B] bound (both passes of a step then see the same, possibly dropped,
    label); apply_fn itself when there are none."""
    if labels is None:
        return apply_fn
    return lambda params, tokens, sigma, **kwargs: apply_fn(params, tokens, sigma, labels=labels, **kwargs)


def draw_noise(rng: jax.Array, x: jax.Array, objective: Objective) -> tuple[jax.Array, jax.Array]:
    """(t [B], z [B, L]): training times (antithetic if asked) and x masked at rate 1 - alpha(t)."""
    rng_t, rng_mask = jax.random.split(rng)
    d = objective.diffusion
    t = sample_times(rng_t, x.shape[0], d.train_eps, d.antithetic)
    return t, mask_tokens(rng_mask, x, objective.schedule.mask_prob(t), objective.mask_id)


def proseco_loss(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    rng: jax.Array,
    step: jax.Array,
    objective: Objective,
    token_mask: jax.Array | None = None,
    *,
    t: jax.Array | None = None,
    z: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The two-pass objective on a clean batch x [B, L]; returns (scalar loss, metrics).

    `params` are those being differentiated. token_mask [B, L] marks real tokens (1) and padding (0);
    losses are averaged over real tokens. t [B] and z [B, L] (the masked input), when given, are used
    instead of drawing them (`draw_noise`), so the loss can be compared term by term with another
    implementation, and a batch split into micro-batches sees the noise of the whole batch. Before
    `corrector.start_step` (or with the corrector disabled) pass two is skipped and the loss is plain MDLM.
    """
    c, mask_id = objective.corrector, objective.mask_id
    token_mask = jnp.ones(x.shape, jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    rng_noise, rng_y, rng_drop1, rng_drop2 = jax.random.split(rng, 4)
    if t is None or z is None:
        t, z = draw_noise(rng_noise, x, objective)
    schedule = objective.schedule
    sigma = schedule.sigma(t)
    weight = schedule.loss_weight(t)

    logits1 = apply_fn(params, z, sigma, dropout_rng=rng_drop1)
    vocab_size = objective.vocab_size
    if objective.diffusion.parameterization == "subs":
        logp1 = subs_log_probs(logits1, z, mask_id, vocab_size)
    else:
        logp1 = log_probs_without_mask(logits1, mask_id, vocab_size=vocab_size)
    mdm = _masked_mean(mdm_loss(logp1, x, z, weight, mask_id), token_mask)
    masked = (z == mask_id) * token_mask
    metrics = {
        "mdm_loss": mdm,
        "mask_rate": jnp.sum(masked) / jnp.maximum(jnp.sum(token_mask), 1.0),
    }

    def pass_two():
        y = corrector_input(rng_y, logp1, x, z, mask_id, c.input, c.use_argmax)
        logp2 = log_probs_without_mask(apply_fn(params, y, sigma, dropout_rng=rng_drop2), mask_id,
                                       vocab_size=vocab_size)
        sc_weight = weight if c.weighted else jnp.ones_like(weight)
        sc = _masked_mean(corrector_loss(logp2, x, y, sc_weight, c.upweight_errors), token_mask)
        acc = _masked_mean((jnp.argmax(logp2, -1) == x).astype(jnp.float32), token_mask)
        in_acc = _masked_mean((y == x).astype(jnp.float32), token_mask)
        return sc, acc, in_acc

    sc_term, sc_metrics = gated_corrector(c, step, pass_two)
    return c.mdm_weight * mdm + sc_term, {**metrics, **sc_metrics}


def nelbo(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    rng: jax.Array,
    schedule: Schedule,
    mask_id: int,
    eps: float = 1e-3,
    token_mask: jax.Array | None = None,
    *,
    t: jax.Array | None = None,
    z: jax.Array | None = None,
    vocab_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One-sample Monte Carlo estimate of the negative ELBO: (sum of nats, number of tokens).

    Uses the subs parameterisation and antithetic times (or the given t [B] and z [B, L]), as validation
    in MDLM; divide the first by the second and by log 2 for bits per token.
    """
    token_mask = jnp.ones(x.shape, jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    if t is None or z is None:
        rng_t, rng_mask = jax.random.split(rng)
        t = sample_times(rng_t, x.shape[0], eps, True)
        z = mask_tokens(rng_mask, x, schedule.mask_prob(t), mask_id)
    logp = subs_log_probs(apply_fn(params, z, schedule.sigma(t)), z, mask_id, vocab_size)
    nats = mdm_loss(logp, x, z, schedule.loss_weight(t), mask_id)
    return jnp.sum(nats * token_mask), jnp.sum(token_mask)
