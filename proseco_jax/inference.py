"""Loading a trained denoiser for sampling and evaluation: the latest checkpoint's EMA parameters of a
workdir, placed on a mesh, and the pure `apply_fn(params, tokens, sigma) -> logits` that samplers take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from proseco_jax import config_base, sampling, schedules
from proseco_jax.config_base import Config
from proseco_jax.errors import UsageError
from proseco_jax.state import ModelOnMesh


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A denoiser ready to sample: the model on its mesh, its parameters and the step they were saved at."""

    placed: ModelOnMesh
    params: Any
    step: int

    @property
    def config(self) -> Config:
        return self.placed.config

    @property
    def mesh(self) -> Mesh:
        return self.placed.mesh

    @property
    def apply_fn(self):
        """`apply_fn(params, tokens [B, L], sigma [B]) -> logits [B, L, V+1]` (inference mode); one function
        object per model, so compiled samplers are reused across calls."""
        return self.placed.apply_fn


def load_model(config: Any, workdir: str, *, mesh: Mesh | None = None, use_ema: bool = True) -> LoadedModel:
    """Restores the latest checkpoint's (EMA) parameters of `workdir` for the model of `config`.

    Raises UsageError (one line) when the workdir has no checkpoint or it does not fit the config.
    """
    placed = ModelOnMesh.create(config_base.resolve(config), mesh)
    step, params = placed.restore_params(workdir, use_ema=use_ema)
    return LoadedModel(placed=placed, params=params, step=step)


def sample_batches(
    loaded: LoadedModel,
    num_samples: int,
    *,
    settings: config_base.Sampling | None = None,
    prompt: np.ndarray | None = None,
    history: bool = False,
    seed: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Draws num_samples sequences, batch by batch (`settings.batch_size` each).

    settings: the sampler (default: the loaded config's `sampling` section, preset applied).
    Yields numpy dicts: tokens [b, L], nfe / predictor_nfe / corrector_nfe [b], history [T, b, L] if asked.
    Each batch is one call of the compiled sampler, its batch sharded over the mesh's data axes.
    """
    config = loaded.config
    if num_samples <= 0:
        raise UsageError(f"the number of samples must be positive, got {num_samples}")
    settings = (config.sampling if settings is None else settings).resolved(config.diffusion.parameterization)
    schedule = schedules.Schedule(config.diffusion)
    rng = jax.random.key(config.seed if seed is None else seed)
    sample = loaded.placed.under_mesh(sampling.sample)
    done = 0
    while done < num_samples:
        out = sample(loaded.apply_fn, loaded.params, settings, jax.random.fold_in(rng, done),
                     schedule=schedule, mask_id=config.mask_id, batch_size=settings.batch_size,
                     length=config.data.length, mesh=loaded.mesh, prompt=prompt, return_history=history)
        take = min(settings.batch_size, num_samples - done)
        result = {key: np.asarray(getattr(out, key))[:take]
                  for key in ("tokens", "nfe", "predictor_nfe", "corrector_nfe")}
        if history:
            result["history"] = np.asarray(out.history)[:, :take]
        yield result
        done += take
