"""``painav clip verify`` and ``painav clip decrypt``: a data manager's tools for one clip file."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path

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


def decrypt(args: argparse.Namespace) -> int:
    if args.pubkey or args.registry:
        _check_signature(args, None, None)
    identities = _load_identities(args.identity)
    to_stdout = args.output == "-"
    out_path = Path(args.output)
    if not to_stdout and out_path.exists() and not args.force:
        print(f"painav: error: {out_path} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    digest = hashlib.sha256()
    with args.file.open("rb") as src, EnvelopeReader(src, identities) as reader:
        if to_stdout:
            # stdout cannot be taken back: a later chunk failing still ends with an error.
            for chunk in reader:
                sys.stdout.buffer.write(chunk)
                digest.update(chunk)
            sys.stdout.buffer.flush()
            return 0
        # Written beside the target and renamed only once every chunk authenticated, so a
        # bad clip never leaves a plausible-looking partial file.
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent or ".")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in reader:
                    out.write(chunk)
                    digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, out_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    print(
        f"{args.file}: decrypted to {out_path} "
        f"({out_path.stat().st_size} bytes, plaintext sha256 {digest.hexdigest()})",
        file=sys.stderr,
    )
    return 0
