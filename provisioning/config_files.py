"""Config files written from their models (:mod:`protocol.device_config`,
:mod:`protocol.receiver_config`), never from templates: what provisioning and the demo write is
what the daemon and the receiver read, key for key."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from protocol.message_codec import describe

from .errors import ProvisioningError

__all__ = ["build", "commented_defaults", "toml_text"]

_Model = TypeVar("_Model", bound=BaseModel)


def build(what: str, make: Callable[[], _Model]) -> _Model:
    """``make()``, with a bad value (from a command's options) as one line naming the key."""
    try:
        return make()
    except ValidationError as exc:
        raise ProvisioningError(f"{what}: {describe(exc)}") from None


def toml_text(model: BaseModel, *, header: str = "") -> str:
    """*model* as TOML: every key set when it was built (defaults left out), *header* (comment
    lines) first. The model has validated it, so the file loads back as the same model."""
    data = model.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    return header + tomli_w.dumps(data)


def commented_defaults(sections: Iterable[tuple[str, BaseModel]]) -> str:
    """Each section's defaults as commented-out TOML, each key with its description: what a
    reader uncomments and changes. Keys without a default value (None) are left out."""
    lines: list[str] = []
    for name, section in sections:
        lines.append(f"# [{name}]")
        values = section.model_dump(mode="json")
        for key, field in type(section).model_fields.items():
            if values[key] is None:
                continue
            line = f"# {tomli_w.dumps({key: values[key]}).strip()}"
            lines.append(f"{line:<36}# {field.description}" if field.description else line)
        lines.append("#")
    return "\n".join(lines[:-1]) + "\n"
