"""Typed TOML config files for both ends: a bad file is one line naming file, section and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ProtocolError

__all__ = ["ConfigError", "load_toml"]

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(ProtocolError, ValueError):
    """A config file is missing, not TOML, or has a bad or unknown key."""


def _valid_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The keys the model allows where *loc* (a path of keys ending in the bad one) points."""
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _describe(path: Path, error: ValidationError, model: type[BaseModel]) -> str:
    errors = error.errors()
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "extra_forbidden":
        valid = _valid_keys(model, loc)
        what = "unknown key (a typo?)" + (f"; valid keys: {', '.join(valid)}" if valid else "")
    elif first["type"] == "missing":
        what = "missing"
    else:
        what = first["msg"].removeprefix("Value error, ")
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]" if loc else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {where}: {what}{more}" if where else f"{path}: {what}{more}"


def load_toml(path: Path, model: type[Model]) -> Model:
    """Read *path* as *model*; raise :class:`ConfigError` with one line on any problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc, model)) from None
