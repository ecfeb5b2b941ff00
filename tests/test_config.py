"""The config tree is generated from typed sections: every field documented, one default, checked once."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import ml_collections
import pytest

from proseco_jax import config_base, configlib
from proseco_jax.configlib import ConfigError, Section
from proseco_jax.errors import UsageError
from proseco_jax.models import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _sections(config: Section, prefix: str = ""):
    """(dotted name, section) of every section in the tree."""
    yield prefix.rstrip("."), config
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Section):
            yield from _sections(value, f"{prefix}{f.name}.")


def _load(path: str) -> ml_collections.ConfigDict:
    return config_base.from_file(path)


@pytest.mark.parametrize("family", sorted(registry.FAMILIES))
def test_every_field_of_every_section_is_documented(family):
    config = config_base.resolve(config_base.get_config(model=family))
    for name, section in _sections(config):
        for field_name, doc in configlib.docs(type(section)).items():
            assert len(doc.split()) >= 2, f"{name}.{field_name} has no documentation"


@pytest.mark.parametrize("family", sorted(registry.FAMILIES))
def test_tree_and_typed_sections_agree_on_every_field_and_default(family):
    tree = config_base.get_config(model=family)
    typed = config_base.resolve(tree)
    assert configlib.to_dict(typed) == tree.to_dict()
    # The defaults of the tree are the dataclass defaults, section by section.
    for name in ("data", "diffusion", "corrector", "train", "mesh", "sampling"):
        section = getattr(typed, name)
        assert section == type(section)(), name
    fam = registry.family(family)
    assert typed.model == fam.config(name=family, **fam.presets[typed.model.preset])


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_file_resolves_and_round_trips_through_json(path):
    tree = _load(path)
    typed = config_base.resolve(tree)
    again = config_base.resolve(json.loads(config_base.to_json(typed)))
    assert again == typed


def test_command_line_style_overrides_reach_the_typed_config():
    tree = config_base.get_config()
    tree.train.num_steps = 7
    tree.sampling.preset = "fast"
    typed = config_base.resolve(tree)
    assert typed.train.num_steps == 7
    settings = typed.sampler_settings
    assert (settings.steps, settings.corrector_every, settings.corrector_steps) == config_base.PRESETS["fast"]
    assert settings.parameterization == typed.diffusion.parameterization


@pytest.mark.parametrize("dotted, value, message", [
    ("train.learning_rate", float("nan"), "train.learning_rate"),
    ("train.learning_rate", -1.0, "train.learning_rate"),
    ("train.ema_decay", 2.0, "train.ema_decay"),
    ("train.num_steps", 0, "train.num_steps"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints"),
    ("train.batch_size", 10, "micro_batches"),  # with micro_batches = 4 below
    ("model.dropout", 1.5, "model.dropout"),
    ("model.num_layers", 0, "model.num_layers"),
    ("model.hidden_size", 0, "model.hidden_size"),
    ("model.num_heads", 0, "model.num_heads"),
    ("model.num_heads", 3, "heads of even width"),
    ("model.vocab_multiple", 0, "model.vocab_multiple"),
    ("model.mlp_ratio", 0, "model.mlp_ratio"),
    ("model.name", "nope", "model.name"),
    ("data.length", 65, "max_length"),
    ("data.vocab_size", 0, "data.vocab_size"),
    ("diffusion.schedule", "sqrt", "diffusion.schedule"),
    ("corrector.input", "visible", "corrector.input"),
    ("sampling.nucleus_p", 0.0, "sampling.nucleus_p"),
    ("sampling.sampler", "ddpm", "sampling.sampler"),
    ("mesh.data", 0, "mesh.data"),
])
def test_bad_values_are_one_line_errors_naming_the_field(dotted, value, message):
    tree = config_base.get_config()
    tree.train.micro_batches = 4
    section, field = dotted.split(".")
    with tree.unlocked():
        tree[section][field] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        config_base.resolve(tree)
    assert isinstance(info.value, UsageError)
    assert "\n" not in str(info.value)


def test_unknown_fields_and_wrong_types_are_rejected():
    tree = config_base.get_config().to_dict()
    tree["train"]["num_step"] = 3
    with pytest.raises(ConfigError, match="unknown config field train.num_step"):
        config_base.resolve(tree)
    tree = config_base.get_config().to_dict()
    tree["train"]["num_steps"] = "many"
    with pytest.raises(ConfigError, match="train.num_steps must be of type int"):
        config_base.resolve(tree)


def test_sections_are_hashable_and_immutable():
    typed = config_base.resolve(config_base.get_config())
    assert hash(typed.sampling) == hash(typed.sampling.replace())
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.train.num_steps = 3  # type: ignore[misc]
