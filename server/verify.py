"""Whether a fetched clip is accepted: unit, signature and binding, hash, envelope header."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from protocol.errors import (
    BindingError,
    HeaderError,
    KeyFormatError,
    RelabelledError,
    SignatureError,
)
from protocol.format import Header, b64decode, parse_header
from protocol.registry import Registry
from protocol.signing import (
    ClipBinding,
    ClipDigests,
    Signature,
    clip_digests,
    verify_clip_digests,
)
from protocol.x25519 import STANZA_TYPE, X25519Recipient

__all__ = ["Reason", "Verdict", "verify_clip_file"]

log = logging.getLogger(__name__)

_MAX_HEADER_LINE: Final = 4096  # real lines are under 100 bytes; never buffer a whole file
_X25519_SHARE_BYTES: Final = 32
_X25519_BODY_BYTES: Final = 32  # a wrapped 16-byte file key and its 16-byte tag


class Reason(enum.StrEnum):
    """Why a clip is refused (quarantined); the values are stable codes for the catalog."""

    UNKNOWN_UNIT = "unknown_unit"
    REVOKED_UNIT = "revoked_unit"
    BAD_SIGNATURE = "bad_signature"
    WRONG_BINDING = "wrong_binding"
    RELABELLED = "relabelled"
    HASH_MISMATCH = "hash_mismatch"
    BAD_HEADER = "bad_header"
    NOT_FOR_DATA_KEY = "not_for_data_key"


@dataclass(frozen=True)
class Verdict:
    """The outcome: accepted (with the signed binding), or refused with a reason and one line."""

    ok: bool
    reason: Reason | None = None
    detail: str = ""
    binding: ClipBinding | None = None

    @classmethod
    def refuse(cls, reason: Reason, detail: str) -> Verdict:
        return cls(ok=False, reason=reason, detail=" ".join(detail.split())[:300])


def verify_clip_file(
    registry: Registry,
    *,
    device_id: str,
    clip_id: str,
    announced_sha256: str,
    signature_text: str,
    clip_file: Path,
    data_key_recipient: str | X25519Recipient,
    manifest_recipients: Sequence[str],
    participant: str | None,
    visit: str | None,
    digests: ClipDigests | None = None,
) -> Verdict:
    """Decide whether *clip_file*, announced by *device_id* as *clip_id*, is accepted.

    The checks, in order, the first failure deciding the reason:

    1. the unit is registered (``unknown_unit``) and not revoked (``revoked_unit``);
    2. the minisign signature verifies with the unit's registered key (``bad_signature``: a
       bit flipped or the file truncated anywhere, another unit's key, an altered trusted
       comment) and its trusted comment names this clip and this unit (``wrong_binding``),
       and the manifest's *participant* and *visit* (``relabelled``: whoever controls the broker
       changed the pseudonym a clip belongs to). A unit of the previous version signs the
       ``painav-clip/1`` form, which names neither: such a clip is accepted with a warning in
       the log, since it proves no more than before the upgrade, until every unit is upgraded;
    3. the file's SHA-256 equals the announced one and the signed one (``hash_mismatch``);
    4. the age header parses and its X25519 stanzas are well-formed (``bad_header``), and it
       holds X25519 stanzas only, one per recipient the manifest lists, among which the
       hospital data key (``not_for_data_key``).

    What 4 cannot establish: an X25519 stanza reveals only an ephemeral public share, not its
    recipient, so without the data key's private part the receiver checks the stanza count and
    the manifest's list, not that the data key can actually open the clip. A unit that encrypts
    to another key while its manifest names the data key passes here; the extraction host, which
    holds the key, finds out at decrypt time (``NoIdentityMatchError``) and quarantines the clip
    then. The signature makes such a clip attributable to the unit that signed it.

    *digests* are the file's, computed by the caller as the bytes arrived (the fetch does);
    without them, the file is read once to compute them. Either way the header is read from
    *clip_file*. No network, no decryption.
    Raises only for the caller's mistakes: ``OSError`` if *clip_file* cannot be read,
    ``KeyFormatError`` if *data_key_recipient* is not an ``age1…`` key.
    """
    # Canonical form: a recipient read from a config file may carry spaces or a newline.
    data_key = str(X25519Recipient.from_string(str(data_key_recipient)))
    entry = registry.devices.get(device_id)
    if entry is None:
        return Verdict.refuse(Reason.UNKNOWN_UNIT, f"unit {device_id!r} is not in the registry")
    key = registry.active_key(device_id)
    if key is None:
        when = f" since {entry.revoked_at:%Y-%m-%d}" if entry.revoked_at else ""
        return Verdict.refuse(Reason.REVOKED_UNIT, f"unit {device_id!r} is revoked{when}")

    try:
        signature = Signature.from_text(signature_text)
    except SignatureError as exc:
        return Verdict.refuse(Reason.BAD_SIGNATURE, f"unreadable signature: {exc}")
    if digests is None:
        digests = clip_digests(clip_file)
    try:
        binding = verify_clip_digests(key, signature, digests, clip_id=clip_id, device_id=device_id)
        signed_labels = binding.check_labels(participant, visit)
    except RelabelledError as exc:
        return Verdict.refuse(Reason.RELABELLED, str(exc))
    except BindingError as exc:
        # Checked after the signature verifies: the unit did sign this comment.
        return Verdict.refuse(Reason.WRONG_BINDING, str(exc))
    except SignatureError as exc:  # another key, altered bytes or comment, legacy format
        return Verdict.refuse(Reason.BAD_SIGNATURE, str(exc))
    actual = digests.sha256

    if actual != announced_sha256:
        return Verdict.refuse(
            Reason.HASH_MISMATCH, f"file has SHA-256 {actual}, announced {announced_sha256}"
        )
    if binding.sha256 != actual:  # checked by verify_clip_digests too; not left to it
        return Verdict.refuse(
            Reason.HASH_MISMATCH, f"file has SHA-256 {actual}, signed {binding.sha256}"
        )

    try:
        header = _read_header(clip_file)
    except HeaderError as exc:
        return Verdict.refuse(Reason.BAD_HEADER, str(exc))
    problem = _recipients_problem(header, data_key, manifest_recipients)
    if problem is not None:
        return Verdict.refuse(Reason.NOT_FOR_DATA_KEY, problem)
    if not signed_labels:
        log.warning(
            "clip %s from %s: signed in the painav-clip/1 form of a unit not yet upgraded, "
            "which does not vouch for its participant and visit; accepted as before",
            clip_id,
            device_id,
        )
    return Verdict(ok=True, binding=binding)


def _read_header(clip_file: Path) -> Header:
    with open(clip_file, "rb") as file:

        def readline() -> bytes:
            line = file.readline(_MAX_HEADER_LINE + 1)
            if len(line) > _MAX_HEADER_LINE:
                raise HeaderError(f"header line longer than {_MAX_HEADER_LINE} bytes")
            return line

        header = parse_header(readline)
    for stanza in header.stanzas:
        if stanza.type != STANZA_TYPE:
            continue  # not malformed, just not ours: judged by _recipients_problem
        if len(stanza.args) != 1:
            raise HeaderError(f"X25519 stanza with {len(stanza.args)} arguments, expected 1")
        if len(b64decode(stanza.args[0], "X25519 share")) != _X25519_SHARE_BYTES:
            raise HeaderError("X25519 stanza: ephemeral share is not 32 bytes")
        if len(stanza.body) != _X25519_BODY_BYTES:
            raise HeaderError("X25519 stanza: body is not 32 bytes")
    return header


def _recipients_problem(
    header: Header, data_key: str, manifest_recipients: Sequence[str]
) -> str | None:
    others = sorted({s.type for s in header.stanzas if s.type != STANZA_TYPE})
    if others:
        # Anything else (a passphrase, a plugin) is a way in that is not the data key.
        return f"header has non-X25519 stanzas: {', '.join(t[:20] for t in others)}"
    if len(header.stanzas) != len(manifest_recipients):
        return (
            f"header has {len(header.stanzas)} X25519 stanzas, "
            f"the manifest lists {len(manifest_recipients)} recipients"
        )
    try:
        listed = {str(X25519Recipient.from_string(r)) for r in manifest_recipients}
    except KeyFormatError as exc:
        return f"manifest lists a recipient that is not an age X25519 key: {exc}"
    if data_key not in listed:
        return f"the manifest's recipients do not include the hospital data key {data_key}"
    return None
