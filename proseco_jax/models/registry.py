"""Model families by name: `config.model.name` picks the Flax module and the config section it reads.

A family is a module class constructed as `module(cfg=<its model section>, vocab_size=V + 1)` and called
as `module.apply(variables, tokens [B, L], sigma [B], labels=None | int32 [B], train=bool) -> logits
[B, L, >= V + 1]` (labels only where the section's `num_classes` > 0), its config section (a
`configlib.Section` with `name` and `num_classes` fields), its size presets, and its forward FLOP count.
Adding a family is one `register(...)` call; training, sampling and inference only ever go through this
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from proseco_jax.configlib import ConfigError, Section, from_dict
from proseco_jax.models import dit, llada


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family brings."""

    module: type[nn.Module]
    config: type[Section]
    presets: Mapping[str, Mapping[str, Any]]
    # (model section, model vocabulary with [MASK], length) -> matmul FLOPs of one forward pass of one
    # sequence.
    forward_flops: Callable[[Any, int, int], float]


FAMILIES: dict[str, Family] = {
    "dit": Family(dit.DiT, dit.DiTConfig, dit.PRESETS, dit.forward_flops),
    "llada": Family(llada.LLaDA, llada.LLaDAConfig, llada.PRESETS, llada.forward_flops),
}


def register(name: str, family: Family) -> None:
    """Makes `config.model.name = name` select `family`."""
    FAMILIES[name] = family


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"config field model.name must be one of {tuple(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def default_config(name: str, preset: str) -> Section:
    """The model section of family `name` with the shape fields of `preset`."""
    fam = family(name)
    if preset not in fam.presets:
        raise ConfigError(f"model preset {preset!r} is not one of {tuple(fam.presets)} of family {name!r}")
    return fam.config(name=name, preset=preset, **fam.presets[preset])


def config_from_dict(values: Mapping[str, Any]) -> Section:
    """The typed model section of the family named by values['name'] (default 'dit')."""
    name = values.get("name", "dit")
    return from_dict(family(name).config, values, prefix="model.")


def build(model_config: Section, vocab_size: int) -> nn.Module:
    """The Flax module of `model_config`'s family for a vocabulary of vocab_size ids ([MASK] included)."""
    return family(model_config.name).module(cfg=model_config, vocab_size=vocab_size)


def forward_flops(model_config: Section, vocab_size: int, length: int) -> float:
    return family(model_config.name).forward_flops(model_config, vocab_size, length)
