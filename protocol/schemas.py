"""Generator of the published MQTT contract: JSON Schema per message kind and an AsyncAPI 3.0 doc.

``python -m protocol.schemas --write`` regenerates ``protocol/schemas/<kind>.json`` and
``protocol/asyncapi.json`` from the models; ``--check`` exits 1, listing the stale files, when
the files in the tree differ from what the models give now (CI runs it through the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from .listing import ListedClip
from .message_codec import MAX_PAYLOAD_BYTES, SCHEMA_VERSION, schema_id
from .message_fields import TIMESTAMP_PATTERN
from .messages import MESSAGE_TYPES
from .topics import ID_PATTERN, PREFIX, ROUTES, Direction, Kind

__all__ = [
    "ASYNCAPI_PATH",
    "LISTING_SCHEMA_PATH",
    "SCHEMA_DIR",
    "asyncapi_document",
    "channel_id",
    "generated_files",
    "json_schema",
    "listing_schema",
    "main",
    "render",
    "stale_files",
    "write_files",
]

SCHEMA_DIR: Final = "schemas"
ASYNCAPI_PATH: Final = "asyncapi.json"
LISTING_SCHEMA_PATH: Final = f"{SCHEMA_DIR}/http/clip-listing.json"
_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
_COMMENT: Final = "Generated from protocol/messages.py by `python -m protocol.schemas --write`."
_MQTT_BINDING: Final = "0.2.0"
_ROLE: Final = re.compile(r":[a-z]+:`~?\.?([^`]+)`")


def _plain(value: Any) -> Any:
    """*value* with reST markup in ``description`` strings turned into plain backquotes."""
    if isinstance(value, dict):
        return {
            key: (
                _plain_text(item)
                if key == "description" and isinstance(item, str)
                else _plain(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _plain_text(text: str) -> str:
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def _file_name(kind: Kind) -> str:
    return f"{SCHEMA_DIR}/{kind.slug}.json"


def json_schema(kind: Kind) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of *kind*'s payload."""
    schema = MESSAGE_TYPES[kind].model_json_schema(by_alias=True)
    head = {"$schema": _DRAFT, "$comment": _COMMENT, "x-painav-schema": schema_id(kind)}
    plain: dict[str, Any] = _plain({**head, **schema})
    return plain


def channel_id(kind: Kind) -> str:
    """The AsyncAPI channel (and message) id of *kind*: ``cmd/arm`` → ``cmdArm``."""
    first, *rest = kind.slug.split("-")
    return first + "".join(word.capitalize() for word in rest)


def _summary(model: type[Any]) -> str:
    return _plain_text(" ".join((model.__doc__ or "").strip().split("\n\n")[0].split()))


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of painav's MQTT interface, from the unit's point of view."""
    models = list(MESSAGE_TYPES.values())
    refs, definitions = models_json_schema(
        [(model, "validation") for model in models],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for kind, model in MESSAGE_TYPES.items():
        name = channel_id(kind)
        route = ROUTES[kind]
        summary = _summary(model)
        channels[name] = {
            "address": f"{PREFIX}/{{site}}/{{device}}/{kind.value}",
            "description": summary,
            "parameters": {
                "site": {"$ref": "#/components/parameters/site"},
                "device": {"$ref": "#/components/parameters/device"},
            },
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        action = "send" if route.direction is Direction.UNIT_TO_HOSPITAL else "receive"
        operations[action + name[0].upper() + name[1:]] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "summary": summary,
            "bindings": {
                "mqtt": {
                    "qos": route.qos,
                    "retain": route.retained,
                    "bindingVersion": _MQTT_BINDING,
                }
            },
        }
        messages[name] = {
            "name": model.__name__,
            "title": schema_id(kind),
            "summary": summary,
            "contentType": "application/json",
            "payload": refs[(model, "validation")],
            "bindings": {
                # MQTT v5 payload format indicator 1: the payload is UTF-8 text.
                "mqtt": {"payloadFormatIndicator": 1, "bindingVersion": _MQTT_BINDING}
            },
            "x-painav-max-bytes": MAX_PAYLOAD_BYTES[kind],
        }
    id_rule = f"Must match {ID_PATTERN}; also the TLS certificate common name."
    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "painav",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": (
                "MQTT v5 contract between painav bedside units and the hospital receiver. "
                "Every payload is one UTF-8 JSON object with a `schema` version marker, "
                "validated strictly at both ends; timestamps match "
                f"{TIMESTAMP_PATTERN}. The status channel carries the unit's last will "
                "(state offline, retained). " + _COMMENT
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "{broker}:8883",
                "protocol": "secure-mqtt",
                "protocolVersion": "5",
                "description": "The site's broker; mutual TLS, the client certificate's common "
                "name is the device or receiver id.",
                "variables": {
                    "broker": {"description": "Broker host name.", "default": "localhost"}
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": definitions["$defs"],
            "messages": messages,
            "parameters": {
                "site": {"description": f"Site id. {id_rule}"},
                "device": {"description": f"Device id of the unit. {id_rule}"},
            },
        },
    }
    plain: dict[str, Any] = _plain(document)
    return plain


def render(document: dict[str, Any]) -> str:
    """*document* as the committed file text: indented, sorted keys, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def listing_schema() -> dict[str, Any]:
    """The JSON Schema of a clip server's ``GET /v1/clips`` body (:mod:`protocol.listing`)."""
    schema = TypeAdapter(list[ListedClip]).json_schema(by_alias=True)
    head = {
        "$schema": _DRAFT,
        "$comment": "Generated from protocol/listing.py by `python -m protocol.schemas --write`.",
        "title": "Clip listing",
        "description": "The body of a unit's GET /v1/clips: the clips it still holds.",
    }
    plain: dict[str, Any] = _plain({**head, **schema})
    return plain


def generated_files() -> dict[str, str]:
    """Every generated file, by path relative to the ``protocol`` package, with its text."""
    files = {_file_name(kind): render(json_schema(kind)) for kind in Kind}
    files[LISTING_SCHEMA_PATH] = render(listing_schema())
    files[ASYNCAPI_PATH] = render(asyncapi_document())
    return files


def _leftovers(root: Path, expected: dict[str, str]) -> list[str]:
    """Schema files in *root* that the models no longer produce."""
    found = (f"{SCHEMA_DIR}/{path.name}" for path in (root / SCHEMA_DIR).glob("*.json"))
    return sorted(relative for relative in found if relative not in expected)


def stale_files(root: Path = _PACKAGE_DIR) -> list[str]:
    """Paths under *root* that are missing, differ from the models, or should not be there."""
    expected = generated_files()
    stale = []
    for relative, text in expected.items():
        path = root / relative
        try:
            current = path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            current = None
        if current != text:
            stale.append(relative)
    return sorted(stale + _leftovers(root, expected))


def write_files(root: Path = _PACKAGE_DIR) -> list[str]:
    """Bring the generated files under *root* up to date; return the paths changed."""
    changed = stale_files(root)
    expected = generated_files()
    for relative in changed:
        path = root / relative
        if relative not in expected:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file and rename: an interrupted run leaves the old file, never half a new one.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(expected[relative])
            os.chmod(temp, 0o644)  # mkstemp makes 0600; these are ordinary repository files
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``--write`` or ``--check``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m protocol.schemas", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true", help="exit 1 if any file is stale")
    parser.add_argument("--root", type=Path, default=_PACKAGE_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write:
        for relative in write_files(args.root):
            print(f"updated protocol/{relative}")
        return 0
    stale = stale_files(args.root)
    for relative in stale:
        print(
            f"protocol/{relative}: stale; run python -m protocol.schemas --write", file=sys.stderr
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
