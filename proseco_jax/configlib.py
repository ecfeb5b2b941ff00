"""Typed config sections: each field's default, documentation and range check are declared once.

A section is a frozen dataclass whose fields are made with `field(default, doc, check)`. Constructing it
runs every field's check and then the section's `validate()`, so a bad value is a `ConfigError` (one line
naming `section.field`) wherever the section is built. The ml_collections tree that the binaries parse
(`--config.FIELD=VALUE`) is generated from the sections (`to_dict`) and converted back by one generic
function (`from_dict`), so the tree and the typed sections cannot disagree on a field or a default.
Sections are hashable, so they can be static arguments of jitted functions.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from proseco_jax.errors import UsageError

# A check returns None when the value is fine, else what is wrong ("must be > 0").
Check = Callable[[Any], "str | None"]


class ConfigError(UsageError, ValueError):
    """A config value that cannot run; the message is one line naming the field."""


def field(default: Any, doc: str, check: Check | None = None) -> Any:
    """A section field with its default, one line of documentation and an optional range check."""
    if isinstance(default, (list, dict)):
        raise TypeError("section defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"doc": doc, "check": check})


# ------------------------------------------------------------------------------------------------ checks


def one_of(*allowed: Any) -> Check:
    return lambda v: None if v in allowed else f"must be one of {allowed}"


def at_least(low: float) -> Check:
    return lambda v: None if _finite(v) and v >= low else f"must be >= {low}"


def greater_than(low: float) -> Check:
    return lambda v: None if _finite(v) and v > low else f"must be > {low}"


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    """low <= v <= high, with either end open when asked."""

    def check(v):
        ok = _finite(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        return None if ok else f"must be in {interval}"

    return check


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------------ sections


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every config section; `NAME` is its key in the config tree."""

    NAME: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            name = f"{self.NAME}.{f.name}" if self.NAME else f.name
            value = _coerce(getattr(self, f.name), hints.get(f.name), name)
            object.__setattr__(self, f.name, value)
            check = f.metadata.get("check")
            problem = check(value) if check is not None else None
            if problem:
                raise ConfigError(f"config field {name} {problem}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Checks between fields of this section (raise ConfigError)."""

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Values as the annotation says: ints accepted for floats, lists frozen into tuples."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple):
        return tuple(_coerce(v, None, name) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and not isinstance(value, hint) or (
        hint in (int, float) and isinstance(value, bool)
    ):
        raise ConfigError(f"config field {name} must be of type {hint.__name__}, got {value!r}")
    return value


def docs(section_cls: type[Section]) -> dict[str, str]:
    """{field name: its documentation} of a section class."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(section_cls)}


def to_dict(section: Section) -> dict[str, Any]:
    """A section (or a tree of them) as nested plain dicts, for the ml_collections tree and config.json."""
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        out[f.name] = to_dict(value) if isinstance(value, Section) else value
    return out


def from_dict(section_cls: type[Section], values: Mapping[str, Any], prefix: str = "") -> Section:
    """Builds `section_cls` from a mapping (a ConfigDict or dict); unknown keys are a ConfigError.

    Fields that are sections themselves are built recursively; missing keys keep their defaults.
    """
    values = dict(values.items())
    names = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}{unknown[0]}"
        raise ConfigError(f"unknown config field {where} (known in this section: {', '.join(names)})")
    hints = typing.get_type_hints(section_cls)
    kwargs = {}
    for key, value in values.items():
        hint = hints.get(key)
        if isinstance(hint, type) and issubclass(hint, Section):
            if not isinstance(value, Section):
                value = from_dict(hint, value, f"{prefix}{key}.")
        kwargs[key] = value
    return section_cls(**kwargs)


def get(section: Section, dotted: str) -> Any:
    """The value of a dotted field name ('train.batch_size') of a section tree."""
    value = section
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
