"""The unmasking strategy of each sampler name, built with keywords from the settings.

Every sampler runs the same loop (loop.py): predict, correct when S > 0 and the sampler corrects, unmask.
They differ in the unmasking strategy (unmasking.py) and in a few traits that callers ask about
(`config_base.SAMPLERS`, read through `Sampling.kind`: the config section validates names without
importing the sampler).
"""

from __future__ import annotations

from collections.abc import Callable

from proseco_jax.config_base import Sampling
from proseco_jax.sampling.unmasking import ConfidenceOrdered, Remasking
from proseco_jax.schedules import Schedule

Unmasker = Remasking | ConfidenceOrdered
# (resolved settings, schedule, mask id) -> the unmasking strategy of one run.
BuildUnmasker = Callable[[Sampling, Schedule, int], Unmasker]


def _ancestral(s: Sampling, schedule: Schedule, mask_id: int) -> Remasking:
    return Remasking(schedule=schedule, mask_id=mask_id, nucleus_p=s.nucleus_p)


def _remdm(s: Sampling, schedule: Schedule, mask_id: int) -> Remasking:
    return Remasking(schedule=schedule, mask_id=mask_id, strategy=s.remdm_strategy, eta=s.remdm_eta,
                     t_on=s.remdm_t_on, t_off=s.remdm_t_off, alpha_on=s.remdm_alpha_on, nucleus_p=s.nucleus_p)


def _confidence(s: Sampling, schedule: Schedule, mask_id: int) -> ConfidenceOrdered:
    del schedule  # Confidence order sets how many tokens a step commits, not the schedule.
    return ConfidenceOrdered(mask_id=mask_id, temperature=s.temperature, nucleus_p=s.nucleus_p,
                             remasking=s.remasking, threshold=s.confidence_threshold)


# sampler name -> its unmasking strategy (the names and traits: `config_base.SAMPLERS`).
UNMASKERS: dict[str, BuildUnmasker] = {
    "mdlm": _ancestral,
    "proseco": _ancestral,
    "remdm": _remdm,
    "confidence": _confidence,
    "llada_block": _confidence,
}
