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

from proseco_jax import checkpoint, schedules, sharding, train
from proseco_jax.errors import UsageError
from proseco_jax.models.dit import DiT
from proseco_jax.sampling import loop
from proseco_jax.sampling import settings as sampler_settings


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A denoiser ready to sample: its module, parameters and the step they were saved at."""

    model: DiT
    params: Any
    step: int
    mesh: Mesh
    rules: sharding.Rules

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
    return LoadedModel(model=compiled.model, params=params, step=step, mesh=mesh, rules=compiled.rules)


def sample_batches(
    config,
    loaded: LoadedModel,
    num_samples: int,
    *,
    prompt: np.ndarray | None = None,
    history: bool = False,
    seed: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Draws num_samples sequences with `config.sampling`, batch by batch (sampling.batch_size each).

    Yields numpy dicts: tokens [b, L], nfe / predictor_nfe / corrector_nfe [b], history [T, b, L] if asked.
    Each batch is one call of the compiled sampler, its batch sharded over the mesh's data axes.
    """
    if num_samples <= 0:
        raise UsageError(f"the number of samples must be positive, got {num_samples}")
    settings = sampler_settings.settings_from_config(
        config.sampling, parameterization=config.diffusion.parameterization
    )
    schedule = schedules.from_config(config.diffusion)
    batch = int(config.sampling.batch_size)
    rng = jax.random.key(config.seed if seed is None else seed)
    done = 0
    while done < num_samples:
        with sharding.mesh_context(loaded.mesh, loaded.rules):
            out = loop.sample_sharded(
                loaded.apply_fn,
                settings,
                schedule,
                jax.random.fold_in(rng, done),
                batch_size=batch,
                length=config.data.length,
                mask_id=config.data.vocab_size,
                mesh=loaded.mesh,
                prompt=prompt,
                params=loaded.params,
                return_history=history,
            )
        take = min(batch, num_samples - done)
        result = {
            "tokens": np.asarray(out.tokens)[:take],
            "nfe": np.asarray(out.nfe)[:take],
            "predictor_nfe": np.asarray(out.predictor_nfe)[:take],
            "corrector_nfe": np.asarray(out.corrector_nfe)[:take],
        }
        if history:
            result["history"] = np.asarray(out.history)[:, :take]
        yield result
        done += take
