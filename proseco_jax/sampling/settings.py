"""Static settings of the sampler: which strategy, how many steps, how the corrector runs.

Inference-time compute is chosen by (T, omega, S): T unmasking steps, a corrector call after every omega-th
step, at most S fixed-point iterations per call, so NFE <= T + S * ceil(T / omega). `SamplerSettings` is a
frozen, hashable dataclass, so it is a static argument of the jitted sampler: one compile per (settings,
shapes). Its constructor checks names and ranges; `check_inputs` checks what depends on shapes and data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from proseco_jax.errors import UsageError

SAMPLERS = ("mdlm", "proseco", "remdm", "confidence", "llada_block")
CORRECTOR_RULES = ("argmax", "sample", "top_k")
CORRECTOR_PRIORS = ("argmax", "sample")
REMDM_STRATEGIES = ("cap", "rescale", "conf", "loop")
PRECISIONS = ("float32", "float64")
PARAMETERIZATIONS = ("subs", "d3pm")

# Presets for L = 64 (the embedded Markov language):   preset -> (steps T, corrector_every omega, S)
#   fast      T = 8,  omega = 1, S = 2    at most  8 + 2 * 8  = 24 NFE
#   balanced  T = 16, omega = 1, S = 2    at most 16 + 2 * 16 = 48 NFE
#   max       T = 64, omega = 1, S = 4    at most 64 + 4 * 64 = 320 NFE (one token per step on average)
PRESETS = {
    "fast": (8, 1, 2),
    "balanced": (16, 1, 2),
    "max": (64, 1, 4),
}


class SamplingError(UsageError, ValueError):
    """Bad sampler settings or inputs; the message is one self-contained line."""


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Everything static about one sampling run (fields mirror `config.sampling`).

    Attributes:
      sampler: one of SAMPLERS. "mdlm" ignores the corrector fields (S = 0); the others run the corrector
        when corrector_steps > 0.
      steps: T, unmasking steps.
      corrector_steps: S, at most this many corrector iterations per corrector call.
      corrector_every: omega, the corrector runs after every omega-th unmasking step (of each block).
      corrector_start: the corrector runs only from this (1-based) unmasking step on.
      corrector_rule: "argmax", "sample" (a draw from nucleus_p of the corrector) or "top_k" (change only
        the corrector_top_k most confident positions whose argmax differs from the current token).
      corrector_top_k: K of the top_k rule.
      corrector_prior: how the corrector's first input y is made from the predictor: "argmax" or "sample".
      nucleus_p: top-p mass kept for every categorical draw (1.0 keeps the full distribution).
      precision: dtype of log-probs and Gumbel noise, "float32" or "float64" (needs jax x64).
      eps: the time grid is linspace(1, eps, T + 1).
      remdm_strategy, remdm_eta, remdm_t_on, remdm_t_off, remdm_alpha_on: ReMDM remasking (see unmasking.py).
      block_length: tokens per block of the "llada_block" sampler.
      eos_id: "llada_block" freezes a sample once a block ends in this id (-1: never).
      temperature: Gumbel temperature of the token proposals of "confidence"/"llada_block" (0 = argmax).
      parameterization: the model's "subs" (the corrector starts from the visible tokens, as MDLM's
        copy-over gives) or "d3pm" (it starts from the model's re-predictions at every position).
    """

    sampler: str = "proseco"
    steps: int = 32
    corrector_steps: int = 2
    corrector_every: int = 1
    corrector_start: int = 0
    corrector_rule: str = "argmax"
    corrector_top_k: int = 4
    corrector_prior: str = "argmax"
    nucleus_p: float = 1.0
    precision: str = "float32"
    eps: float = 1e-5
    remdm_strategy: str = "rescale"
    remdm_eta: float = 0.02
    remdm_t_on: float = 0.55
    remdm_t_off: float = 0.05
    remdm_alpha_on: float = 0.9
    block_length: int = 16
    eos_id: int = -1
    temperature: float = 1.0
    parameterization: str = "subs"

    def __post_init__(self):
        _one_of("sampler", self.sampler, SAMPLERS)
        _one_of("corrector_rule", self.corrector_rule, CORRECTOR_RULES)
        _one_of("corrector_prior", self.corrector_prior, CORRECTOR_PRIORS)
        _one_of("remdm_strategy", self.remdm_strategy, REMDM_STRATEGIES)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("parameterization", self.parameterization, PARAMETERIZATIONS)
        _at_least("steps", self.steps, 1)
        _at_least("corrector_steps", self.corrector_steps, 0)
        _at_least("corrector_every", self.corrector_every, 1)
        _at_least("corrector_start", self.corrector_start, 0)
        _at_least("block_length", self.block_length, 1)
        _at_least("eos_id", self.eos_id, -1)
        if self.corrector_rule == "top_k":
            _at_least("corrector_top_k", self.corrector_top_k, 1)
        if not 0.0 < self.nucleus_p <= 1.0:
            raise SamplingError(f"sampling.nucleus_p must be in (0, 1], got {self.nucleus_p}")
        if not 0.0 < self.eps < 1.0:
            raise SamplingError(f"sampling.eps must be in (0, 1), got {self.eps}")
        if self.temperature < 0.0:
            raise SamplingError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.sampler == "remdm":
            self._check_remdm()

    def _check_remdm(self):
        if not 0.0 <= self.remdm_eta <= 1.0:
            raise SamplingError(f"sampling.remdm_eta must be in [0, 1], got {self.remdm_eta}")
        if self.remdm_strategy == "loop":
            if not 0.0 < self.remdm_t_off < self.remdm_t_on < 1.0:
                raise SamplingError("ReMDM loop needs 0 < sampling.remdm_t_off < sampling.remdm_t_on < 1, "
                                    f"got t_off={self.remdm_t_off}, t_on={self.remdm_t_on}")
            if not 0.0 < self.remdm_alpha_on < 1.0:
                raise SamplingError(f"sampling.remdm_alpha_on must be in (0, 1), got {self.remdm_alpha_on}")
            # The loop phase keeps a masked token masked w.p. (1 - alpha_on - eta alpha_on) / (1 - alpha_on).
            if self.remdm_eta * self.remdm_alpha_on > 1.0 - self.remdm_alpha_on:
                raise SamplingError("ReMDM loop needs remdm_eta * remdm_alpha_on <= 1 - remdm_alpha_on, got "
                                    f"eta={self.remdm_eta}, alpha_on={self.remdm_alpha_on}")

    @property
    def num_corrector_steps(self) -> int:
        """S as the loop sees it: plain MDLM never corrects."""
        return 0 if self.sampler == "mdlm" else self.corrector_steps

    @property
    def confidence_ordered(self) -> bool:
        return self.sampler in ("confidence", "llada_block")


def _one_of(name: str, value: str, allowed: tuple[str, ...]):
    if value not in allowed:
        raise SamplingError(f"sampling.{name} must be one of {allowed}, got {value!r}")


def _at_least(name: str, value: int, low: int):
    if int(value) != value or value < low:
        raise SamplingError(f"sampling.{name} must be an integer >= {low}, got {value!r}")


def settings_from_config(sampling_config: Any, *, parameterization: str = "subs") -> SamplerSettings:
    """Builds settings from `config.sampling`; a non-empty `preset` overrides (steps, every, S).

    Fields that `config.sampling` lacks keep the defaults of `SamplerSettings`.
    `parameterization` is `config.diffusion.parameterization`, which lives outside the sampling section.
    """
    get = sampling_config.get if hasattr(sampling_config, "get") else (
        lambda key, default=None: getattr(sampling_config, key, default))
    values = {}
    for field in dataclasses.fields(SamplerSettings):
        value = get(field.name, None)
        if value is not None:
            values[field.name] = value
    values["parameterization"] = parameterization
    preset = get("preset", "") or ""
    if preset:
        if preset not in PRESETS:
            raise SamplingError(f"sampling.preset must be one of {tuple(PRESETS)} or '', got {preset!r}")
        values["steps"], values["corrector_every"], values["corrector_steps"] = PRESETS[preset]
    return SamplerSettings(**values)


def check_inputs(
    settings: SamplerSettings,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    prompt: Any = None,
    infill: tuple[Any, Any] | None = None,
) -> int:
    """Checks shapes and token ids against the settings; returns the prompt length P.

    Token ids are checked only where the arrays are concrete (not tracers of an outer jit).
    """
    if settings.precision == "float64" and not jax.config.jax_enable_x64:
        raise SamplingError("sampling.precision='float64' needs jax x64: set JAX_ENABLE_X64=1 or "
                            "jax.config.update('jax_enable_x64', True) before sampling")
    _at_least("batch_size", batch_size, 1)
    _at_least("length", length, 1)
    _at_least("mask_id (= V, the number of real tokens)", mask_id, 1)
    if settings.eos_id >= mask_id:
        raise SamplingError(f"sampling.eos_id={settings.eos_id} is not a real token id in [0, {mask_id})")
    prompt_len = 0
    if prompt is not None:
        shape = tuple(np.shape(prompt))
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != batch_size):
            raise SamplingError(f"prompt must have shape [P] or [{batch_size}, P], got {list(shape)}")
        prompt_len = shape[-1]
        if prompt_len >= length:
            raise SamplingError(f"prompt of length {prompt_len} leaves nothing to generate in a sequence of "
                                f"length {length}")
        _check_ids("prompt", prompt, mask_id)
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
                _check_ids("infill tokens", np.where(keep_np, tokens_np, 0), mask_id)
            generated = (~keep_np[:, prompt_len:]).sum(axis=1)
    _check_geometry(settings, length - prompt_len, int(generated.min()))
    return prompt_len


def _check_geometry(settings: SamplerSettings, region: int, generated: int):
    """Confidence-ordered samplers commit >= 1 token per step, so T cannot exceed what is generated."""
    if not settings.confidence_ordered:
        return
    if settings.sampler == "llada_block":
        if region % settings.block_length:
            raise SamplingError(f"sampling.block_length={settings.block_length} must divide the generated "
                                f"length {region}")
        num_blocks = region // settings.block_length
        if settings.steps % num_blocks:
            raise SamplingError(f"sampling.steps={settings.steps} must be a multiple of the number of "
                                f"blocks {num_blocks}")
    if settings.steps > generated:
        raise SamplingError(f"sampling.steps={settings.steps} exceeds the {generated} generated positions "
                            f"of the {settings.sampler!r} sampler")


def _concrete(array: Any) -> np.ndarray | None:
    if isinstance(array, jax.core.Tracer):
        return None
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return None
    return np.asarray(array)


def _check_ids(name: str, array: Any, mask_id: int):
    values = _concrete(array)
    if values is None or values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.integer):
        raise SamplingError(f"{name} must hold integer token ids, got dtype {values.dtype}")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= mask_id:
        raise SamplingError(f"{name} holds ids in [{low}, {high}], outside the real tokens [0, {mask_id})")
