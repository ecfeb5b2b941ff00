"""Sampling from masked diffusion LMs: MDLM, ProSeCo (unmask, then correct), ReMDM, confidence-ordered, LLaDA.

`sample(apply_fn, params, settings, rng, ...)` runs one jitted `lax.scan` of the sampler step, its batch
sharded over a mesh when given one; with `host_loop=True` it dispatches the same jitted step from a Python
loop (a benchmark baseline). `settings` is the typed `config_base.Sampling` section; the model is always
called as apply_fn(params, tokens int32 [B, L], sigma float32 [B]) -> logits [B, L, >= vocab_size], of which
the sampler reads `vocab_size` ids (default V + 1; LLaDA's whole table, its [MASK] inside) and never [MASK].
"""

from proseco_jax.sampling.loop import SampleOutput, SamplerState, sample
from proseco_jax.sampling.settings import SamplingError

__all__ = [
    "SampleOutput",
    "SamplerState",
    "SamplingError",
    "sample",
]
