"""Classifier-free guidance for a label-conditioned denoiser (Ho & Salimans), as the authors' sampler uses it:

    log p~(x | z) = log_softmax(gamma * log p(x | z, c) + (1 - gamma) * log p(x | z, none))

gamma = 0 is the unconditional model alone and gamma = 1 the conditional one alone (one model call each);
any other gamma needs both, computed here in one call of a doubled batch (the same FLOPs as two calls, one
dispatch). "none" is the label table's last row, the one label dropout trains.

The corrector under guidance (`Guidance.corrector`):
- "guided" (default): the corrector starts from the argmax of the guided prediction and its calls are
  guided with the same gamma (two evaluations per call when gamma is neither 0 nor 1).
- "conditional" (the authors'): the corrector starts from the argmax of the conditional prediction and
  calls the conditional model only (their code forces gamma = 1 there); the unmasking that follows is
  drawn from the corrector's log-probs. So when the corrector runs at every step (omega = 1), the guided
  prediction never reaches a token and gamma has no effect on the samples, in their sampler as in this
  one: hence the default. At gamma = 0 everything, the corrector included, is unconditional (their code
  has no conditional prediction to start from there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

# (tokens int32 [N, L], sigma float32 [N], labels int32 [N]) -> log-probs [N, L, V] ([MASK] at -inf).
LabelledLogProbs = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Static guidance settings of one sampling run."""

    scale: float  # gamma >= 0
    label: int  # the class steered towards, in [0, null_label)
    null_label: int  # the "no label" row: the model's num_classes
    corrector: str = "guided"  # "guided" | "conditional" (the authors')

    @property
    def mixes(self) -> bool:
        """Predictions need both the conditional and the unconditional model."""
        return self.scale not in (0.0, 1.0)

    @property
    def corrector_mixes(self) -> bool:
        """The corrector's calls need both models too."""
        return self.mixes and self.corrector == "guided"

    @property
    def one_model_label(self) -> int:
        """The label of a call that reads one model: a prediction at gamma = 0 or 1, or the corrector unless
        it is guided with a mixing gamma (gamma = 0 reads the unconditional model throughout)."""
        return self.null_label if self.scale == 0.0 else self.label


def combine(cond_logp: jax.Array, uncond_logp: jax.Array, scale: float) -> jax.Array:
    """The guided log-probs [..., V] of conditional and unconditional log-probs [..., V], renormalised.

    An id that either model rules out (log-prob -inf, such as [MASK]) stays ruled out: with gamma > 1 the
    weight 1 - gamma is negative, and -inf times it would otherwise become +inf.
    """
    finite = jnp.isfinite(cond_logp) & jnp.isfinite(uncond_logp)
    mixed = scale * jnp.where(finite, cond_logp, 0.0) + (1.0 - scale) * jnp.where(finite, uncond_logp, 0.0)
    return jax.nn.log_softmax(jnp.where(finite, mixed, -jnp.inf), axis=-1)


def paired_log_probs(log_probs: LabelledLogProbs, tokens: jax.Array, sigma: jax.Array,
                     guidance: Guidance) -> tuple[jax.Array, jax.Array]:
    """(conditional, unconditional) log-probs [B, L, V] of tokens [B, L] from one call of batch 2B."""
    batch = tokens.shape[0]
    labels = jnp.concatenate([jnp.full((batch,), guidance.label, jnp.int32),
                              jnp.full((batch,), guidance.null_label, jnp.int32)])
    both = log_probs(jnp.concatenate([tokens, tokens]), jnp.concatenate([sigma, sigma]), labels)
    return both[:batch], both[batch:]
