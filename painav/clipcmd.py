"""``painav clip verify`` and ``painav clip decrypt``: a data manager's tools for one clip file."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from protocol.envelope import EnvelopeReader
from protocol.errors import KeyFormatError
from protocol.format import parse_header
from protocol.registry import Registry, RegistryError
from protocol.signing import ClipBinding, PublicKey, Signature, verify_clip
from protocol.x25519 import X25519Identity


def _public_key(args: argparse.Namespace, signature: Signature) -> PublicKey:
    """The key from ``--pubkey``, or the registry's key of the unit the signature names."""
    if args.registry is not None:
        device_id = ClipBinding.from_comment(signature.trusted_comment).device_id
        key = Registry.load(args.registry).active_key(device_id)
        if key is None:
            raise RegistryError(f"{args.registry}: no active unit {device_id!r}")
        return key
    path = Path(args.pubkey)
    if path.is_file():
        return PublicKey.from_file(path)
    return PublicKey.from_string(args.pubkey)


def _check_signature(
    args: argparse.Namespace, clip_id: str | None, device_id: str | None
) -> ClipBinding:
    clip: Path = args.file
    signature = Signature.from_file(args.sig or clip.with_name(clip.name + ".minisig"))
    key = _public_key(args, signature)
    with clip.open("rb") as f:
        return verify_clip(key, signature, f, clip_id=clip_id, device_id=device_id)


def _load_identities(path: Path) -> list[X25519Identity]:
    """Read an age identity file: ``AGE-SECRET-KEY-1…`` lines, ``#`` comments."""
    lines = [ln.strip() for ln in path.read_text(encoding="ascii").splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if not keys:
        raise KeyFormatError(f"{path}: no AGE-SECRET-KEY-1… line in identity file")
    try:
        return [X25519Identity.from_string(k) for k in keys]
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from None


def verify(args: argparse.Namespace) -> int:
    binding = _check_signature(args, args.clip_id, args.device_id)
    with args.file.open("rb") as f:
        header = parse_header(f.readline)  # structure only: the hospital holds no key here
    kinds = ", ".join(sorted({s.type for s in header.stanzas}))
    print(
        f"{args.file}: OK  clip {binding.clip_id} from unit {binding.device_id}, "
        f"sha256 {binding.sha256}, age v1 to {len(header.stanzas)} recipient(s) ({kinds})"
    )
    return 0


# Matroska files (and so the unit's clips) begin with the EBML magic number.
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"


class _Hashed:
    """The decrypted stream, read once from the front: the bytes already peeked at, then the
    rest, all of it hashed on the way through."""

    def __init__(self, head: bytes, reader: EnvelopeReader) -> None:
        self._head = head
        self._reader = reader
        self.digest = hashlib.sha256(head)

    def read(self, size: int = -1) -> bytes:
        if self._head and size >= 0:
            data, self._head = self._head[:size], self._head[size:]
            return data
        head, self._head = self._head, b""
        data = self._reader.read(size)
        self.digest.update(data)
        return head + data


def decrypt(args: argparse.Namespace) -> int:
    """Decrypt a clip. To a file: the media remuxed (packets copied, nothing re-encoded) so
    that players show its length and can seek, which the live-written clip does not allow; a
    plaintext that is not Matroska is written as decrypted. To stdout (``-o -``): the
    plaintext exactly as decrypted."""
    binding = _check_signature(args, None, None) if args.pubkey or args.registry else None
    if args.audit is not None:
        if binding is None:
            print("painav: error: --audit needs --registry or --pubkey: the audit log names the "
                  "clip its signature vouches for", file=sys.stderr)  # fmt: skip
            return 2
        _audit(args.audit, binding.clip_id)  # no audit, no decrypt
    identities = _load_identities(args.identity)
    to_stdout = args.output == "-"
    out_path = Path(args.output)
    if not to_stdout and out_path.exists() and not args.force:
        print(f"painav: error: {out_path} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    with args.file.open("rb") as src, EnvelopeReader(src, identities) as reader:
        if to_stdout:
            # stdout cannot be taken back: a later chunk failing still ends with an error.
            for chunk in reader:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return 0
        head = reader.read(len(_EBML_MAGIC))
        stream = _Hashed(head, reader)
        # Written beside the target and renamed only once every chunk authenticated, so a
        # bad clip never leaves a plausible-looking partial file.
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent or ".")
        try:
            with os.fdopen(fd, "wb") as out:
                if head == _EBML_MAGIC:
                    note = _remux(args.file, stream, out)
                    if note is None:
                        return 1
                else:
                    note = "as decrypted (not Matroska)"
                    while chunk := stream.read(1 << 20):
                        out.write(chunk)
                # The demuxer may stop before the end: the rest must still authenticate.
                while stream.read(1 << 20):
                    pass
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, out_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    print(
        f"{args.file}: decrypted to {out_path} ({note}; {out_path.stat().st_size} bytes, "
        f"plaintext sha256 {stream.digest.hexdigest()})",
        file=sys.stderr,
    )
    return 0


def _audit(extract_config: Path, clip_id: str) -> None:
    """Write to the catalog's audit log that this account decrypts *clip_id* by hand."""
    import getpass

    from protocol.extract_config import ExtractConfig
    from protocol.tomlconfig import load_toml
    from server.catalog import Catalog

    actor = f"os:{getpass.getuser()}"[:64]
    with Catalog(load_toml(extract_config, ExtractConfig).catalog.url, actor=actor) as catalog:
        catalog.audit_decrypt(clip_id, worker=actor, purpose="manual")


def _remux(clip: Path, stream: _Hashed, out: BinaryIO) -> str | None:
    """Remux the Matroska in *stream* into *out*; a note for the summary, or None after
    reporting media that cannot be remuxed."""
    from server.extract.media import MediaError
    from server.extract.remux import remux

    try:
        result = remux(stream, out)
    except MediaError as exc:
        print(f"painav: error: {clip}: {exc} (use -o - for the plaintext as is)", file=sys.stderr)
        return None
    length = f"{result.duration_s:.3f} s" if result.duration_s is not None else "unknown length"
    return f"remuxed, {length}, {result.packets} packets copied"
