"""The ProSeCo fine-tuning objective: LLaDA's supervised fine-tuning plus the corrector pass, on responses.

An example is x = [prompt | response | EOS padding], with `response` [B, L] marking every position after
the prompt (the padding included, as LLaDA keeps it in the loss). With p(t) = (1 - eps) t + eps:

    z     = x with each response token replaced by [MASK] w.p. p(t); the prompt is never masked
    L_MDM = sum over masked response positions of -log p1[x] / p(t), divided by the response length
            (LLaDA's SFT, its Algorithm 2; `corrector.enabled=False` is exactly that)
    y     = stop_gradient(argmax p1) at the response positions (all of them, or the masked ones, as
            `corrector.input` says); the prompt stays x
    L_SC  = -w log p2[x] over the response positions (w = 1/p(t) when weighted, else 1; where y == x,
            -w p2[x] when errors are up-weighted), divided by the response length
    loss  = mean over the batch of a L_MDM + b L_SC

The model is not time-conditioned (LLaDA), so it sees sigma = 0. Where the paper's appendix is silent
(the normalisation of L_SC, the EOS padding in it, the weighting of the prompt-free corrector input) this
follows LLaDA's SFT for pass one and the pretraining objective's options for pass two.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from proseco_jax import diffusion
from proseco_jax.diffusion import ApplyFn, Objective


def sft_noise(rng: jax.Array, x: jax.Array, response: jax.Array, mask_id: int, eps: float
              ) -> tuple[jax.Array, jax.Array]:
    """(p [B], z [B, L]): LLaDA's masking rate p = (1 - eps) t + eps, t ~ U[0, 1], and x with each response
    token masked at that rate."""
    rng_t, rng_mask = jax.random.split(rng)
    p = (1.0 - eps) * jax.random.uniform(rng_t, (x.shape[0],)) + eps
    masked = response & (jax.random.uniform(rng_mask, x.shape) < p[:, None])
    return p, jnp.where(masked, mask_id, x)


def _per_response(per_token: jax.Array, response: jax.Array) -> jax.Array:
    """Mean over the batch of each sample's sum over its response positions / its response length."""
    length = jnp.maximum(jnp.sum(response, axis=1), 1)
    return jnp.mean(jnp.sum(jnp.where(response, per_token, 0.0), axis=1) / length)


def _response_mean(hits: jax.Array, response: jax.Array) -> jax.Array:
    """The fraction of all response positions of the batch where hits [B, L] holds."""
    return jnp.sum(hits & response) / jnp.maximum(jnp.sum(response), 1)


def sft_loss(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    response: jax.Array,
    rng: jax.Array,
    step: jax.Array,
    objective: Objective,
    *,
    p: jax.Array | None = None,
    z: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The fine-tuning objective on x [B, L] with response [B, L] bool; returns (scalar loss, metrics).

    The ids read from the logits are `objective.vocab_size` (LLaDA: 126464 rows, [MASK] 126336 inside).
    p [B] and z [B, L], when given, replace the drawn masking rate and masked input.
    """
    c, mask_id = objective.corrector, objective.mask_id
    response = response.astype(bool)
    rng_noise, rng_y = jax.random.split(rng)
    if p is None or z is None:
        p, z = sft_noise(rng_noise, x, response, mask_id, objective.diffusion.train_eps)
    weight = 1.0 / p
    sigma = jnp.zeros((x.shape[0],), jnp.float32)

    def log_probs(tokens):
        logits = apply_fn(params, tokens, sigma)
        return diffusion.log_probs_without_mask(logits, mask_id, vocab_size=objective.vocab_size)

    logp1 = log_probs(z)
    mdm = _per_response(diffusion.mdm_loss(logp1, x, z, weight, mask_id), response)
    masked = (z == mask_id) & response
    metrics = {"mdm_loss": mdm, "mask_rate": _response_mean(masked, response)}
    def pass_two():
        y = diffusion.corrector_input(rng_y, logp1, x, z, mask_id, c.input, c.use_argmax)
        y = jnp.where(response, y, x)  # The prompt is given, never predicted.
        logp2 = log_probs(y)
        sc_weight = weight if c.weighted else jnp.ones_like(weight)
        sc = _per_response(diffusion.corrector_loss(logp2, x, y, sc_weight, c.upweight_errors), response)
        return sc, _response_mean(jnp.argmax(logp2, -1) == x, response), _response_mean(y == x, response)

    sc_term, sc_metrics = diffusion.gated_corrector(c, step, pass_two)
    return c.mdm_weight * mdm + sc_term, {**metrics, **sc_metrics}


def sft_nats(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    response: jax.Array,
    rng: jax.Array,
    objective: Objective,
) -> tuple[jax.Array, jax.Array]:
    """Validation: (sum of -log p1[x] / p(t) over the masked response positions, number of response tokens).

    One draw of the masking rate and mask per sample (as training draws them); the ratio of the two sums is
    the vanilla SFT loss (pass one only) per response token, a bound on the response's negative
    log-likelihood given the prompt.
    """
    mask_id = objective.mask_id
    response = response.astype(bool)
    p, z = sft_noise(rng, x, response, mask_id, objective.diffusion.train_eps)
    logits = apply_fn(params, z, jnp.zeros((x.shape[0],), jnp.float32))
    logp1 = diffusion.log_probs_without_mask(logits, mask_id, vocab_size=objective.vocab_size)
    nats = diffusion.mdm_loss(logp1, x, z, 1.0 / p, mask_id)
    return jnp.sum(jnp.where(response, nats, 0.0)), jnp.sum(response).astype(jnp.float32)
