"""The C2SP age test kit (npm ``cctv-age``) run through the envelope, header and STREAM APIs."""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protocol.envelope import EnvelopeReader
from protocol.errors import HeaderError, HeaderMacError, NoIdentityMatchError, PayloadError
from protocol.format import parse_header
from protocol.stream import CHUNK_SIZE, NONCE_SIZE, StreamCipher

TESTDATA = Path(__file__).resolve().parents[1] / "vectors" / "cctv-age" / "testdata"
UNUSED_FEATURES = ("armor", "scrypt", "hybrid")  # painav writes none of these
EXPECTED_TOTAL = 143


@dataclass
class Vector:
    name: str
    expect: str
    file_key: bytes
    identities: list[str] = field(default_factory=list)
    payload_sha256: str | None = None
    data: bytes = b""


def load(path: Path) -> Vector:
    raw = path.read_bytes()
    meta, data = raw.split(b"\n\n", 1)
    vector = Vector(path.name, "", b"")
    compressed = False
    for line in meta.decode().splitlines():
        key, value = line.split(": ", 1)
        if key == "expect":
            vector.expect = value
        elif key == "file key":
            vector.file_key = bytes.fromhex(value)
        elif key == "identity":
            vector.identities.append(value)
        elif key == "payload":
            vector.payload_sha256 = value
        elif key == "compressed":
            compressed = value == "zlib"
    vector.data = zlib.decompress(data) if compressed else data
    return vector


def all_vector_paths() -> list[Path]:
    if not TESTDATA.is_dir():
        # Not a skip: the kit is part of the set-up (scripts/setup.sh), so its absence is a bug.
        raise RuntimeError(f"age test kit missing at {TESTDATA}; run 'make setup'")
    return sorted(TESTDATA.iterdir())


PATHS = [p for p in all_vector_paths() if not p.name.startswith(UNUSED_FEATURES)]


def test_kit_is_complete() -> None:
    assert len(all_vector_paths()) == EXPECTED_TOTAL
    assert len(PATHS) == 67


def decrypt(vector: Vector) -> tuple[str, bytes]:
    """Decrypt like an application would, mapping the outcome to the kit's vocabulary."""
    released = bytearray()
    try:
        with EnvelopeReader(io.BytesIO(vector.data), vector.identities) as reader:
            for chunk in reader:
                released += chunk
    except HeaderError:
        return "header failure", bytes(released)
    except NoIdentityMatchError:
        return "no match", bytes(released)
    except HeaderMacError:
        return "HMAC failure", bytes(released)
    except PayloadError:
        return "payload failure", bytes(released)
    return "success", bytes(released)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_vector_outcome(path: Path) -> None:
    vector = load(path)
    outcome, plaintext = decrypt(vector)
    assert outcome == vector.expect
    if vector.payload_sha256 is not None:
        # For payload failures this is the hash of what was released before the failure.
        assert hashlib.sha256(plaintext).hexdigest() == vector.payload_sha256


def split_header(data: bytes) -> tuple[bytes, io.BytesIO]:
    stream = io.BytesIO(data)
    header = parse_header(stream.readline)
    return header.encode(), stream


@pytest.mark.parametrize(
    "path", [p for p in PATHS if load(p).expect != "header failure"], ids=lambda p: p.name
)
def test_header_round_trip(path: Path) -> None:
    vector = load(path)
    encoded, rest = split_header(vector.data)
    assert vector.data.startswith(encoded)
    assert rest.tell() == len(encoded)


@pytest.mark.parametrize(
    "path", [p for p in PATHS if load(p).expect == "success"], ids=lambda p: p.name
)
def test_stream_reencryption(path: Path) -> None:
    """Re-encrypting the plaintext under the vector's file key reproduces its payload."""
    vector = load(path)
    _, plaintext = decrypt(vector)
    _, rest = split_header(vector.data)
    nonce = rest.read(NONCE_SIZE)
    cipher = StreamCipher(vector.file_key, nonce)
    out = bytearray(CHUNK_SIZE + 16)
    payload = bytearray()
    view = memoryview(plaintext)
    offsets = range(0, max(len(view), 1), CHUNK_SIZE)
    for i, start in enumerate(offsets):
        last = i == len(offsets) - 1
        n = cipher.seal_into(view[start : start + CHUNK_SIZE], last, out)
        payload += out[:n]
    assert bytes(payload) == rest.read()
