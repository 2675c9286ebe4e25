"""Tests of protocol.schemas: the committed JSON Schemas and AsyncAPI document match the models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import protocol
from protocol.message_codec import MAX_PAYLOAD_BYTES, schema_id
from protocol.messages import MESSAGE_TYPES
from protocol.schemas import (
    ASYNCAPI_PATH,
    SCHEMA_DIR,
    asyncapi_document,
    channel_id,
    generated_files,
    main,
    stale_files,
)
from protocol.topics import ROUTES, Direction, Kind

from .message_examples import examples

PACKAGE_DIR = Path(protocol.__file__).parent


def test_committed_files_match_the_models() -> None:
    stale = stale_files(PACKAGE_DIR)
    assert not stale, f"stale generated files {stale}: run python -m protocol.schemas --write"


def test_check_command_passes_on_the_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"]) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the generated files to break."""
    for relative in generated_files():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_DIR / relative, tmp_path / relative)
    return tmp_path


def test_check_names_a_changed_file(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tree / SCHEMA_DIR / "status.json"
    path.write_text(path.read_text().replace('"online"', '"awake"'))
    assert main(["--check", "--root", str(tree)]) == 1
    assert "protocol/schemas/status.json: stale" in capsys.readouterr().err
    assert main(["--write", "--root", str(tree)]) == 0
    assert main(["--check", "--root", str(tree)]) == 0
    assert path.read_text() == (PACKAGE_DIR / SCHEMA_DIR / "status.json").read_text()


def test_check_names_missing_and_leftover_files(tree: Path) -> None:
    (tree / ASYNCAPI_PATH).unlink()
    (tree / SCHEMA_DIR / "old.json").write_text("{}\n")
    assert stale_files(tree) == [ASYNCAPI_PATH, f"{SCHEMA_DIR}/old.json"]
    main(["--write", "--root", str(tree)])
    assert stale_files(tree) == []
    assert not (tree / SCHEMA_DIR / "old.json").exists()


def test_one_schema_file_per_kind() -> None:
    names = {path.name for path in (PACKAGE_DIR / SCHEMA_DIR).glob("*.json")}
    assert names == {f"{kind.slug}.json" for kind in Kind}


@pytest.mark.parametrize("kind", list(Kind))
def test_schema_file_describes_the_model(kind: Kind) -> None:
    text = (PACKAGE_DIR / SCHEMA_DIR / f"{kind.slug}.json").read_text(encoding="utf-8")
    assert text.endswith("}\n")
    schema = json.loads(text)
    model = MESSAGE_TYPES[kind]
    wire_names = {field.alias or name for name, field in model.model_fields.items()}
    assert set(schema["properties"]) == wire_names
    assert schema["additionalProperties"] is False
    assert schema["required"][0] == "schema"
    assert _schema_ids(schema["properties"]["schema"]) == MESSAGE_TYPES[kind].READS
    assert schema["x-painav-schema"] == schema_id(kind) == MESSAGE_TYPES[kind].READS[0]
    # Every key of a real payload is one the schema knows.
    assert set(json.loads(examples()[kind].to_payload())) <= set(schema["properties"])


def _schema_ids(node: dict[str, Any]) -> tuple[str, ...]:
    """The schema ids a ``schema`` property allows: one (``const``) or several (``enum``), a
    kind whose contract changed reading its previous version too."""
    return (node["const"],) if "const" in node else tuple(node["enum"])


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_asyncapi_document_shape() -> None:
    document = json.loads((PACKAGE_DIR / ASYNCAPI_PATH).read_text(encoding="utf-8"))
    assert document == asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "painav"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {f"painav/v1/{{site}}/{{device}}/{kind.value}" for kind in Kind}
    for kind in Kind:
        name = channel_id(kind)
        channel = document["channels"][name]
        assert set(channel["parameters"]) == {"site", "device"}
        route = ROUTES[kind]
        action = "send" if route.direction is Direction.UNIT_TO_HOSPITAL else "receive"
        operation = document["operations"][action + name[0].upper() + name[1:]]
        assert operation["action"] == action
        assert operation["bindings"]["mqtt"]["qos"] == route.qos
        assert operation["bindings"]["mqtt"]["retain"] == route.retained
        message = document["components"]["messages"][name]
        assert message["title"] == schema_id(kind)
        assert message["x-painav-max-bytes"] == MAX_PAYLOAD_BYTES[kind]
        payload_schema = _resolve(document, message["payload"]["$ref"])
        assert _schema_ids(payload_schema["properties"]["schema"]) == MESSAGE_TYPES[kind].READS
    assert set(document["operations"]) == {
        "sendStatus",
        "sendClips",
        "sendEvents",
        "sendTelemetry",
        "receiveCmdArm",
        "receiveReceipts",
        "receiveQc",
        "receiveEventAcks",
        "receiveCrl",
    }


def test_asyncapi_references_all_resolve() -> None:
    document = asyncapi_document()
    refs = _refs(document)
    assert refs
    for ref in refs:
        _resolve(document, ref)
    assert "ClipManifest" in document["components"]["schemas"]


def test_the_clip_listing_schema_describes_the_model() -> None:
    from protocol.listing import ListedClip
    from protocol.schemas import LISTING_SCHEMA_PATH

    schema = json.loads((PACKAGE_DIR / LISTING_SCHEMA_PATH).read_text(encoding="utf-8"))
    assert schema["type"] == "array"
    entry = schema["$defs"]["ListedClip"]
    assert set(entry["properties"]) == set(ListedClip.model_fields)
    assert set(entry["required"]) == set(ListedClip.model_fields)
    assert entry["additionalProperties"] is False
