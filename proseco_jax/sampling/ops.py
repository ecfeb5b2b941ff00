"""Pure building blocks of every sampler: log-probs from logits, nucleus truncation, Gumbel-max draws, top-k.

A categorical draw is the Gumbel-max trick, token = argmax_v (log q_v + g_v) with g = -log(-log u) and
u ~ U(0, 1). Precision matters here: a float32 uniform has 24 bits, so g lies in about [-4.5, 16.6] and a
token whose log-prob trails the best by more than ~21 nats is never drawn. Small probabilities are thus
truncated, which biases the draws toward high-probability tokens and lowers sample entropy (the MDLM and
ReMDM papers trace part of MDLM's low generative perplexity to this). float64 noise (g up to ~36.7) removes
the effect for any realistic vocabulary; the sampler offers it through `precision`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proseco_jax import diffusion

# The losses' log-softmax (vocabulary padding dropped, [MASK] at a true -inf) and gather: the sampler reads
# the model exactly as training scored it. A true -inf is safe here: exp gives exactly 0, and no arithmetic
# in the sampler ever combines two infinities.
NEG_INF = diffusion.NEG_INF
log_probs_without_mask = diffusion.log_probs_without_mask
token_log_prob = diffusion.token_log_prob


def nucleus_log_probs(logp: jax.Array, p: float) -> jax.Array:
    """Keeps the smallest top set of tokens whose mass stays <= p (always the best one) and renormalises.

    Tokens tied with the last kept probability are kept too, which avoids a scatter back from sorted order.
    """
    if p >= 1.0:
        return logp
    probs = jnp.exp(logp)
    sorted_desc = -jnp.sort(-probs, axis=-1)
    kept = jnp.maximum(jnp.sum(jnp.cumsum(sorted_desc, axis=-1) <= p, axis=-1, keepdims=True), 1)
    cutoff = jnp.take_along_axis(sorted_desc, kept - 1, axis=-1)
    truncated = jnp.where(probs >= cutoff, logp, NEG_INF)
    return truncated - jax.nn.logsumexp(truncated, axis=-1, keepdims=True)


def gumbel_argmax(key: jax.Array, logq: jax.Array, temperature: float = 1.0) -> jax.Array:
    """One categorical draw per row of logq [..., K] (unnormalised is fine); temperature 0 is argmax."""
    if temperature == 0.0:
        return jnp.argmax(logq, axis=-1).astype(jnp.int32)
    # Drawn flat and reshaped: XLA:CPU compiles partitionable threefry over a small multi-dimensional shape
    # more than 10x slower (seconds per program); the values stay independent of how the batch is sharded.
    noise = jax.random.gumbel(key, (logq.size,), logq.dtype).reshape(logq.shape)
    return jnp.argmax(logq + temperature * noise, axis=-1).astype(jnp.int32)


def top_k_mask(scores: jax.Array, k: jax.Array | int) -> jax.Array:
    """bool [B, L]: the k[b] highest scores of each row (ties by position), never a -inf score."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    k = jnp.asarray(k)
    return (ranks < (k[..., None] if k.ndim else k)) & (scores > NEG_INF)
