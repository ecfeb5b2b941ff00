"""Loading a trained denoiser for sampling and evaluation: the latest checkpoint's EMA parameters of a
workdir, placed on a mesh, and the pure `apply_fn(params, tokens, sigma) -> logits` that samplers take.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax.sharding import Mesh

from proseco_jax import checkpoint, sharding, train
from proseco_jax.models.dit import DiT


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A denoiser ready to sample: its module, parameters and the step they were saved at."""

    model: DiT
    params: Any
    step: int
    mesh: Mesh

    def apply_fn(self, params: Any, tokens: jax.Array, sigma: jax.Array) -> jax.Array:
        """logits [B, L, V+1] float32 of tokens [B, L] at noise level sigma [B] (inference mode)."""
        return self.model.apply({"params": params}, tokens, sigma, train=False)


def load_model(config, workdir: str, *, mesh: Mesh | None = None, use_ema: bool = True) -> LoadedModel:
    """Restores the latest checkpoint's (EMA) parameters of `workdir` for the model of `config`.

    Raises UsageError (one line) when the workdir has no checkpoint or it does not fit the config.
    """
    mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
    compiled = train.build(config, mesh)
    step, params = checkpoint.restore_params(workdir, compiled.abstract_state.params, use_ema=use_ema)
    return LoadedModel(model=compiled.model, params=params, step=step, mesh=mesh)
