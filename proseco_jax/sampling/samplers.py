"""The sampler names of `sampling.sampler` and what each means: the one table that turns a name into
behaviour (its unmasking strategy, built with keywords from the settings, and the traits callers ask about).

Every sampler runs the same loop (loop.py): predict, correct when S > 0 and the sampler corrects, unmask.
They differ in the unmasking strategy (unmasking.py) and in a few traits: MDLM never corrects; the
confidence-ordered samplers commit at least one token per step (T <= generated positions); LLaDA's block
sampler unmasks the generated region in semi-autoregressive blocks of `block_length`, stops once a closed
block ends in `eos_id`, and decodes greedily by default (LLaDA's evaluation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from proseco_jax.sampling.unmasking import ConfidenceOrdered, Remasking
from proseco_jax.schedules import Schedule

if TYPE_CHECKING:  # config_base reads this table through Sampling.kind, so it is not imported at run time.
    from proseco_jax.config_base import Sampling

Unmasker = Remasking | ConfidenceOrdered
# (resolved settings, schedule, mask id) -> the unmasking strategy of one run.
BuildUnmasker = Callable[["Sampling", Schedule, int], Unmasker]


def _ancestral(s: Sampling, schedule: Schedule, mask_id: int) -> Remasking:
    return Remasking(schedule=schedule, mask_id=mask_id, nucleus_p=s.nucleus_p)


def _remdm(s: Sampling, schedule: Schedule, mask_id: int) -> Remasking:
    return Remasking(schedule=schedule, mask_id=mask_id, strategy=s.remdm_strategy, eta=s.remdm_eta,
                     t_on=s.remdm_t_on, t_off=s.remdm_t_off, alpha_on=s.remdm_alpha_on, nucleus_p=s.nucleus_p)


def _confidence(s: Sampling, schedule: Schedule, mask_id: int) -> ConfidenceOrdered:
    del schedule  # Confidence order sets how many tokens a step commits, not the schedule.
    return ConfidenceOrdered(mask_id=mask_id, temperature=s.temperature, nucleus_p=s.nucleus_p,
                             remasking=s.remasking, threshold=s.confidence_threshold)


@dataclasses.dataclass(frozen=True)
class SamplerKind:
    """What a sampler name means."""

    unmasker: BuildUnmasker
    corrects: bool = True  # runs the corrector when sampling.corrector_steps > 0
    confidence_ordered: bool = False  # commits the most confident proposals, at least one per step
    blocked: bool = False  # unmasks in blocks of sampling.block_length and stops at sampling.eos_id
    greedy: bool = False  # temperature -1 means 0 (else 1)


SAMPLERS: dict[str, SamplerKind] = {
    "mdlm": SamplerKind(_ancestral, corrects=False),
    "proseco": SamplerKind(_ancestral),
    "remdm": SamplerKind(_remdm),
    "confidence": SamplerKind(_confidence, confidence_ordered=True),
    "llada_block": SamplerKind(_confidence, confidence_ordered=True, blocked=True, greedy=True),
}
