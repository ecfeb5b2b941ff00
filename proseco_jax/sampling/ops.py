"""Pure building blocks of every sampler: log-probs from logits, nucleus truncation, Gumbel-max draws, top-k,
and the per-sample keys every draw comes from.

Each sample (row b of a batch) carries its own PRNG key, fold_in(rng, its index in the run): a draw for row b
uses row b's key only, so a sample is the same whatever batch, batch size or mesh it is drawn in.

A categorical draw is the Gumbel-max trick, token = argmax_v (log q_v + g_v) with g = -log(-log u) and
u ~ U(0, 1). Precision matters here: a float32 uniform has 24 bits, so g lies in about [-4.5, 16.6] and a
token whose log-prob trails the best by more than ~21 nats is never drawn. Small probabilities are thus
truncated, which biases the draws toward high-probability tokens and lowers sample entropy (the MDLM and
ReMDM papers trace part of MDLM's low generative perplexity to this). float64 noise (g up to ~36.7) removes
the effect for any realistic vocabulary; the sampler offers it through `precision`.
"""

from __future__ import annotations

import math

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


def sample_keys(rng: jax.Array, first: jax.Array | int, batch_size: int) -> jax.Array:
    """keys [B]: fold_in(rng, first + b), the key of the sample with index first + b in its run."""
    index = jnp.asarray(first, jnp.uint32) + jnp.arange(batch_size, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)


def split_rows(keys: jax.Array, num: int) -> tuple[jax.Array, ...]:
    """`num` key arrays [B], row b of each split from keys[b] (keys [B])."""
    split = jax.vmap(lambda key: jax.random.split(key, num))(keys)
    return tuple(split[:, i] for i in range(num))


def fold_in_rows(keys: jax.Array, data: jax.Array | int) -> jax.Array:
    """keys [B] -> keys [B]: fold_in(keys[b], data) per row."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def uniform_rows(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 [B, ...] of U(0, 1), row b drawn from keys[b] (keys [B], shape [B, ...])."""
    return _rows(jax.random.uniform, keys, shape, jnp.float32)


def gumbel_argmax(keys: jax.Array, logq: jax.Array, temperature: float = 1.0) -> jax.Array:
    """One categorical draw per row of logq [B, ..., K] (unnormalised is fine), sample b's noise from
    keys[b] (keys [B]); temperature 0 is argmax."""
    if temperature == 0.0:
        return jnp.argmax(logq, axis=-1).astype(jnp.int32)
    noise = _rows(jax.random.gumbel, keys, logq.shape, logq.dtype)
    return jnp.argmax(logq + temperature * noise, axis=-1).astype(jnp.int32)


def _rows(draw, keys: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """draw(keys[b], ...) for each row of a [B, ...] array."""
    # Drawn flat per row and reshaped: XLA:CPU compiles partitionable threefry over a small multi-dimensional
    # shape more than 10x slower (seconds per program).
    size = math.prod(shape[1:])
    return jax.vmap(lambda key: draw(key, (size,), dtype))(keys).reshape(shape)


def top_k_mask(scores: jax.Array, k: jax.Array | int) -> jax.Array:
    """bool [B, L]: the k[b] highest scores of each row (ties by position), never a -inf score."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    k = jnp.asarray(k)
    return (ranks < (k[..., None] if k.ndim else k)) & (scores > NEG_INF)
