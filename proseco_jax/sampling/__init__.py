"""Sampling from masked diffusion LMs: MDLM, ProSeCo (unmask, then correct), ReMDM, confidence-ordered, LLaDA.

`Sampler(apply_fn, params, schedule, mask_id, ...)`, or `Sampler.for_model(placed, params)` for a model on
its mesh, holds what every call needs; `sampler.sample(settings, rng, batch_size, length, prompt=...,
infill=...)` runs one jitted `lax.scan` of the sampler step, its batch sharded over the mesh when there is
one; with `host_loop=True` it dispatches the same jitted step from a Python loop (a benchmark baseline).
`settings` is the typed `config_base.Sampling` section, whose `sampler` name means what its traits
(`config_base.SAMPLERS`) and its unmasking strategy (`samplers.UNMASKERS`) say; the model is always called
as apply_fn(params, tokens int32 [B, L], sigma float32 [B]) -> logits [B, L, >= vocab_size], of which the
sampler reads `vocab_size` ids (default V + 1; LLaDA's whole table, its [MASK] inside) and never [MASK].
"""

from proseco_jax.sampling.loop import Inputs, SampleOutput, SamplerState
from proseco_jax.sampling.sampler import Sampler
from proseco_jax.sampling.samplers import UNMASKERS
from proseco_jax.sampling.settings import SamplingError

__all__ = [
    "Inputs",
    "SampleOutput",
    "Sampler",
    "SamplerState",
    "SamplingError",
    "UNMASKERS",
]
