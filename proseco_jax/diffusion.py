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

import jax
import jax.numpy as jnp

from proseco_jax.schedules import Schedule

# Large finite stand-in for -inf: keeps exp() at 0 and p * log p free of NaNs.
NEG_INF = -1e6

# apply_fn(tokens [B, L] int32, sigma [B] float32, dropout_rng or None) -> logits [B, L, V+1] float32.
ApplyFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static options of the objective (mirrors `config.corrector` and `config.diffusion`)."""

    mask_id: int
    schedule: Schedule
    train_eps: float = 1e-3
    antithetic: bool = True
    parameterization: str = "subs"  # "subs" or "d3pm"
    corrector_enabled: bool = True
    corrector_start_step: int = 0
    corrector_input: str = "masked"  # "all" or "masked"
    use_argmax: bool = True
    weighted: bool = True
    upweight_errors: bool = False
    mdm_weight: float = 1.0
    corrector_weight: float = 1.0

    def __post_init__(self):
        if self.parameterization not in ("subs", "d3pm"):
            raise ValueError(
                f"diffusion.parameterization must be 'subs' or 'd3pm', got {self.parameterization!r}"
            )
        if self.corrector_input not in ("all", "masked"):
            raise ValueError(f"corrector.input must be 'all' or 'masked', got {self.corrector_input!r}")

    @classmethod
    def from_config(cls, config, schedule: Schedule) -> LossConfig:
        c, f = config.corrector, config.diffusion
        return cls(
            mask_id=config.data.vocab_size,
            schedule=schedule,
            train_eps=f.train_eps,
            antithetic=f.antithetic,
            parameterization=f.parameterization,
            corrector_enabled=c.enabled,
            corrector_start_step=c.start_step,
            corrector_input=c.input,
            use_argmax=c.use_argmax,
            weighted=c.weighted,
            upweight_errors=c.upweight_errors,
            mdm_weight=c.mdm_weight,
            corrector_weight=c.corrector_weight,
        )


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


def forbid_mask(logits: jax.Array, mask_id: int) -> jax.Array:
    """log_softmax of logits [B, L, V+1] with the [MASK] logit sent to -inf."""
    is_mask = jnp.arange(logits.shape[-1]) == mask_id
    return jax.nn.log_softmax(jnp.where(is_mask, NEG_INF, logits.astype(jnp.float32)), axis=-1)


def subs_log_probs(logits: jax.Array, z: jax.Array, mask_id: int) -> jax.Array:
    """The subs parameterisation: [MASK] forbidden; visible tokens of z keep their token with prob 1."""
    logp = forbid_mask(logits, mask_id)
    onehot = jax.nn.one_hot(z, logits.shape[-1], dtype=jnp.bool_)
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


def proseco_loss(
    apply_fn: ApplyFn,
    x: jax.Array,
    rng: jax.Array,
    step: jax.Array,
    cfg: LossConfig,
    token_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The two-pass objective on a clean batch x [B, L]; returns (scalar loss, metrics).

    `apply_fn` closes over the parameters being differentiated. token_mask [B, L] marks real tokens
    (1) and padding (0); losses are averaged over real tokens. Before `corrector_start_step` (or with
    the corrector disabled) pass two is skipped and the loss is plain MDLM.
    """
    b = x.shape[0]
    token_mask = jnp.ones(x.shape, jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    rng_t, rng_mask, rng_y, rng_drop1, rng_drop2 = jax.random.split(rng, 5)
    t = sample_times(rng_t, b, cfg.train_eps, cfg.antithetic)
    schedule = cfg.schedule
    sigma = schedule.sigma(t)
    weight = schedule.loss_weight(t)
    z = mask_tokens(rng_mask, x, schedule.mask_prob(t), cfg.mask_id)

    logits1 = apply_fn(z, sigma, rng_drop1)
    if cfg.parameterization == "subs":
        logp1 = subs_log_probs(logits1, z, cfg.mask_id)
    else:
        logp1 = forbid_mask(logits1, cfg.mask_id)
    l_mdm = mdm_loss(logp1, x, z, weight, cfg.mask_id)
    mdm = _masked_mean(l_mdm, token_mask)
    masked = (z == cfg.mask_id) * token_mask
    metrics = {
        "mdm_loss": mdm,
        "mask_rate": jnp.sum(masked) / jnp.maximum(jnp.sum(token_mask), 1.0),
    }
    if not cfg.corrector_enabled:
        zero = jnp.zeros((), jnp.float32)
        metrics.update(corrector_loss=zero, corrector_accuracy=zero, corrector_input_accuracy=zero)
        return cfg.mdm_weight * mdm, metrics

    def with_corrector(_):
        y = corrector_input(rng_y, logp1, x, z, cfg.mask_id, cfg.corrector_input, cfg.use_argmax)
        logp2 = forbid_mask(apply_fn(y, sigma, rng_drop2), cfg.mask_id)
        sc_weight = weight if cfg.weighted else jnp.ones_like(weight)
        sc = _masked_mean(corrector_loss(logp2, x, y, sc_weight, cfg.upweight_errors), token_mask)
        acc = _masked_mean((jnp.argmax(logp2, -1) == x).astype(jnp.float32), token_mask)
        in_acc = _masked_mean((y == x).astype(jnp.float32), token_mask)
        return sc, acc, in_acc

    def without_corrector(_):
        zero = jnp.zeros((), jnp.float32)
        return zero, zero, zero

    active = step >= cfg.corrector_start_step
    if cfg.corrector_start_step <= 0:
        sc, acc, in_acc = with_corrector(None)
    else:
        sc, acc, in_acc = jax.lax.cond(active, with_corrector, without_corrector, None)
    loss = cfg.mdm_weight * mdm + jnp.where(active, cfg.corrector_weight, 0.0) * sc
    metrics.update(corrector_loss=sc, corrector_accuracy=acc, corrector_input_accuracy=in_acc)
    return loss, metrics


def nelbo(
    apply_fn: ApplyFn,
    x: jax.Array,
    rng: jax.Array,
    schedule: Schedule,
    mask_id: int,
    eps: float = 1e-3,
    token_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One-sample Monte Carlo estimate of the negative ELBO: (sum of nats, number of tokens).

    Uses the subs parameterisation and antithetic times, as validation in MDLM; divide the first by the
    second and by log 2 for bits per token.
    """
    token_mask = jnp.ones(x.shape, jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    rng_t, rng_mask = jax.random.split(rng)
    t = sample_times(rng_t, x.shape[0], eps, True)
    z = mask_tokens(rng_mask, x, schedule.mask_prob(t), mask_id)
    logp = subs_log_probs(apply_fn(z, schedule.sigma(t), None), z, mask_id)
    nats = mdm_loss(logp, x, z, schedule.loss_weight(t), mask_id)
    return jnp.sum(nats * token_mask), jnp.sum(token_mask)
