"""Sampling from masked diffusion LMs: MDLM, ProSeCo (unmask, then correct), ReMDM, confidence-ordered, LLaDA.

`sample` runs one jitted `lax.scan`; `sample_sharded` shards its batch over a mesh; `sample_hostloop` is the
same sampler driven from Python (a benchmark baseline). Settings come from `settings_from_config`.
"""

from proseco_jax.sampling.hostloop import sample_hostloop
from proseco_jax.sampling.loop import SampleOutput, SamplerState, sample, sample_sharded
from proseco_jax.sampling.settings import (
    PRESETS,
    SAMPLERS,
    SamplerSettings,
    SamplingError,
    settings_from_config,
)

__all__ = [
    "PRESETS",
    "SAMPLERS",
    "SampleOutput",
    "SamplerSettings",
    "SamplerState",
    "SamplingError",
    "sample",
    "sample_hostloop",
    "sample_sharded",
    "settings_from_config",
]
