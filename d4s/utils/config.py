"""The one way configs are read outside the training CLI (which is LightningCLI/jsonargparse): a YAML mapping into
checked dataclasses, with ``key.sub=value`` overrides. Annotation, evaluation and model configs all use it, so they
share one override syntax and one error format (``<file>.<section>.<key>: <what is wrong>``).

Unknown keys and wrong types are errors that name the key: a typo never silently falls back to a default.
``Literal`` fields accept only their listed values; ``tuple`` fields accept YAML lists; an int is accepted where a
float is expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from d4s.utils.checks import check_choice


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML file holds (``{}`` for an empty file).

    Raises:
        FileNotFoundError: no such file. ValueError: not valid YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got a {type(values).__name__}")  # noqa: TRY004
    return values


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` with dotted ``overrides`` applied (``{"clips.stride": 8}`` sets ``values["clips"]["stride"]``).

    Raises:
        ValueError: a dotted key passes through a setting that is not a section.
    """
    for dotted, value in (overrides or {}).items():
        *sections, name = dotted.split(".")
        target = values
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ValueError(f"{dotted}: {section!r} is not a section")  # noqa: TRY004
        target[name] = value
    return values


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is Literal:
        check_choice(value, where, annotation)
        return value
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(value) if origin is tuple else list(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: Any, where: str = "config") -> Any:
    """Dataclass ``cls`` from a mapping (``None``: the defaults), checking keys and types recursively.

    Raises:
        ValueError: naming the key (``where.section.key``) whose value is unknown or of the wrong type; a value the
            dataclass itself refuses keeps the dataclass's message.
    """
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")  # noqa: TRY004
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {', '.join(names)}")
    return cls(**{key: _convert(value, hints[key], f"{where}.{key}") for key, value in values.items()})
