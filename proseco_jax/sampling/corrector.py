"""The ProSeCo corrector: a fixed-point iteration of the model on its own fully unmasked guess.

Given the predictor's log-probs at z, the corrector starts from y_0 = argmax p_theta(. | z) (or a draw)
at masked positions and z elsewhere ("subs"; with "d3pm" the model's re-predictions replace visible tokens
too), then for j = 0 .. S-1
    c_j     = log_softmax(f_theta(y_j)) with the [MASK] logit removed (every position may change)
    y_{j+1} = argmax c_j  |  a draw from nucleus_p(c_j)  |  y_j with only the K most confident positions
              where argmax c_j != y_j moved to the argmax ("top_k")
stopping once y no longer changes (a deterministic rule has reached its fixed point). Decoded tokens of z
take their value from y (masked positions stay masked) and c drives the next unmasking. This module holds
the pure pieces; the loop that drives them is `_correct` in loop.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from proseco_jax.sampling import ops


@dataclasses.dataclass(frozen=True)
class Corrector:
    """The corrector's static options (the corrector_* fields of `config_base.Sampling`)."""

    mask_id: int
    steps: int
    rule: str = "argmax"
    top_k: int = 4
    prior: str = "argmax"
    nucleus_p: float = 1.0
    keep_visible: bool = True

    @property
    def stops_at_fixed_point(self) -> bool:
        """With "sample" the reference keeps drawing from the cached c even when y did not change."""
        return self.rule != "sample"

    def initial(self, keys: jax.Array, tokens: jax.Array, logp: jax.Array, fixed: jax.Array) -> jax.Array:
        """y_0 [B, L] from the predictor log-probs logp [B, L, vocab_size] (a draw uses sample b's key
        keys[b]); fixed positions keep their tokens."""
        if self.prior == "argmax":
            y = jnp.argmax(logp, axis=-1).astype(jnp.int32)
        else:  # From the nucleus of the prediction, as the reference draws it from its (filtered) cache.
            y = ops.gumbel_argmax(keys, ops.nucleus_log_probs(logp, self.nucleus_p))
        keep = fixed | (tokens != self.mask_id) if self.keep_visible else fixed
        return jnp.where(keep, tokens, y)

    def update(self, keys: jax.Array, c: jax.Array, y: jax.Array, movable: jax.Array) -> jax.Array:
        """y_{j+1} [B, L] from c [B, L, vocab_size] and y_j (a draw uses keys[b], keys [B]); only `movable`
        [B, L] positions may change."""
        if self.rule == "argmax":
            proposal = jnp.argmax(c, axis=-1).astype(jnp.int32)
            return jnp.where(movable, proposal, y)
        c = ops.nucleus_log_probs(c, self.nucleus_p)
        if self.rule == "sample":
            return jnp.where(movable, ops.gumbel_argmax(keys, c), y)
        best = jnp.argmax(c, axis=-1).astype(jnp.int32)
        score = jnp.where(movable & (best != y), jnp.exp(jnp.max(c, axis=-1)), -jnp.inf)
        return jnp.where(ops.top_k_mask(score, self.top_k), best, y)

    def merge(self, tokens: jax.Array, y: jax.Array, movable: jax.Array, active: jax.Array) -> jax.Array:
        """Decoded, movable tokens of active samples take y; [MASK]s and fixed tokens stay."""
        keep = (tokens == self.mask_id) | ~movable | ~active[:, None]
        return jnp.where(keep, tokens, y)
