"""Checks of one sampling run's inputs against its settings, and the sampler's error type.

The settings are the typed `config_base.Sampling` section, whose constructor already checks every field
(names, ranges, ReMDM's loop window). What depends on the run is checked here, before anything compiles:
batch and length, prompt and infill shapes and token ids, the x64 switch that float64 sampling needs, and
the geometry of confidence-ordered samplers, which commit at least one token per step (T <= generated
positions) and, in blocks, an even number of steps per block (block_length | L - P, blocks | T). Token ids
are those of the model's output vocabulary [0, vocab_size) less [MASK]: ids above the mask exist when the
[MASK] lies inside a larger table (LLaDA: [MASK] 126336 of 126464 ids, the chat template's tokens above it).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from proseco_jax.config_base import Sampling
from proseco_jax.errors import UsageError


class SamplingError(UsageError, ValueError):
    """Bad sampler inputs; the message is one self-contained line."""


def _at_least(name: str, value: int, low: int):
    if int(value) != value or value < low:
        raise SamplingError(f"sampling.{name} must be an integer >= {low}, got {value!r}")


def check_inputs(
    settings: Sampling,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    prompt: Any = None,
    infill: tuple[Any, Any] | None = None,
    block_length: int | None = None,
    vocab_size: int | None = None,
) -> int:
    """Checks shapes and token ids against the settings; returns the prompt length P.

    Args:
      prompt: int [P] or [B, P]; infill: (tokens int [B, L], keep_mask bool [B, L]).
      block_length: tokens per block of a blocked confidence-ordered sampler (None: one block).
      vocab_size: ids the sampler reads from the logits, [MASK] among them (None: mask_id + 1).
    Token ids are checked only where the arrays are concrete (not tracers of an outer jit).
    """
    if settings.precision == "float64" and not jax.config.jax_enable_x64:
        raise SamplingError("sampling.precision='float64' needs jax x64: set JAX_ENABLE_X64=1 or "
                            "jax.config.update('jax_enable_x64', True) before sampling")
    _at_least("batch_size", batch_size, 1)
    _at_least("length", length, 1)
    _at_least("mask_id (= V, the number of real tokens)", mask_id, 1)
    vocab_size = mask_id + 1 if vocab_size is None else vocab_size
    if int(vocab_size) != vocab_size or vocab_size <= mask_id:
        raise SamplingError(f"vocab_size={vocab_size!r} must be an integer above mask_id={mask_id} (the ids "
                            "read from the logits, [MASK] among them)")
    if settings.eos_id >= vocab_size or settings.eos_id == mask_id:
        raise SamplingError(f"sampling.eos_id={settings.eos_id} is not a real token id "
                            f"{_real_ids(mask_id, vocab_size)}")
    prompt_len = 0
    if prompt is not None:
        shape = tuple(np.shape(prompt))
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != batch_size):
            raise SamplingError(f"prompt must have shape [P] or [{batch_size}, P], got {list(shape)}")
        prompt_len = shape[-1]
        if prompt_len >= length:
            raise SamplingError(f"prompt of length {prompt_len} leaves nothing to generate in a sequence of "
                                f"length {length}")
        _check_ids("prompt", prompt, mask_id, vocab_size)
    generated = np.full((batch_size,), length - prompt_len)
    if infill is not None:
        if not isinstance(infill, (tuple, list)) or len(infill) != 2:
            raise SamplingError("infill must be a pair (tokens [B, L], keep_mask [B, L])")
        tokens, keep = infill
        for name, array in (("infill tokens", tokens), ("infill keep_mask", keep)):
            if tuple(np.shape(array)) != (batch_size, length):
                raise SamplingError(f"{name} must have shape [{batch_size}, {length}], "
                                    f"got {list(np.shape(array))}")
        keep_np, tokens_np = _concrete(keep), _concrete(tokens)
        if keep_np is not None:
            keep_np = keep_np.astype(bool)
            if tokens_np is not None:
                _check_ids("infill tokens", np.where(keep_np, tokens_np, 0), mask_id, vocab_size)
            generated = (~keep_np[:, prompt_len:]).sum(axis=1)
    _check_geometry(settings, length - prompt_len, int(generated.min()), block_length)
    return prompt_len


def _check_geometry(settings: Sampling, region: int, generated: int, block_length: int | None):
    problem = geometry_problem(settings, region, generated, block_length)
    if problem:
        raise SamplingError(problem)


def geometry_problem(settings: Sampling, region: int, generated: int | None = None,
                     block_length: int | None = None) -> str:
    """Why a confidence-ordered sampler cannot fill a generated region of `region` positions after the
    prompt ("" if it can): in blocks of `block_length` (None: one block) it needs whole blocks whose number
    divides sampling.steps, and it commits at least one token per step, so steps <= the `generated`
    positions (default: the region)."""
    generated = region if generated is None else generated
    if not settings.kind.confidence_ordered:
        return ""
    if block_length is not None:
        if region % block_length:
            return (f"the {region} generated positions are not whole blocks of sampling.block_length="
                    f"{block_length}")
        num_blocks = region // block_length
        if settings.steps % num_blocks:
            return (f"sampling.steps={settings.steps} is not a multiple of the {num_blocks} blocks of "
                    f"{block_length} in the {region} generated positions")
    if settings.steps > generated:
        return (f"sampling.steps={settings.steps} exceeds the {generated} generated positions: the "
                f"{settings.sampler!r} sampler commits at least one per step")
    return ""


def _concrete(array: Any) -> np.ndarray | None:
    if isinstance(array, jax.core.Tracer):
        return None
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return None
    return np.asarray(array)


def _real_ids(mask_id: int, vocab_size: int) -> str:
    """The real token ids in words: [0, V), or [0, vocab_size) less [MASK] when the mask lies inside."""
    if vocab_size == mask_id + 1:
        return f"in [0, {mask_id})"
    return f"in [0, {vocab_size}) other than [MASK] = {mask_id}"


def _check_ids(name: str, array: Any, mask_id: int, vocab_size: int):
    values = _concrete(array)
    if values is None or values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.integer):
        raise SamplingError(f"{name} must hold integer token ids, got dtype {values.dtype}")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocab_size or bool(np.any(values == mask_id)):
        raise SamplingError(f"{name} holds ids in [{low}, {high}], outside the real tokens "
                            f"{_real_ids(mask_id, vocab_size)}")
