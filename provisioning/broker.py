"""A site's Mosquitto configuration: one mutual-TLS listener, certificate logins, a topic ACL.

``write_broker_config(site, OUT)`` writes a folder that a Mosquitto 2.0 broker runs from as it
is (``mosquitto -c OUT/mosquitto.conf``)::

    OUT/mosquitto.conf   the configuration, every line commented with why
    OUT/painav.acl       who may publish and read what, generated from protocol.topics.ROUTES
    OUT/ca.pem           root CA + device CA: whose client certificates are accepted
    OUT/crl.pem          the current CRLs of both CAs
    OUT/broker.crt       the broker's server certificate
    OUT/broker.key       its key: 0640 root:<broker group> when written by root, else 0600
    OUT/data/            persistence (queued QoS 1 messages, retained status and arm commands)

**Copies, not references to the site folder.** Mosquitto started as root (as systemd does) drops
to the ``mosquitto`` user *before* it opens any certificate, key or CRL, and it opens them again
as that user on every reload. The site folder is root's alone (mode 0700, keys 0600, the CA keys
beside them), so the broker cannot read it, and it must not be able to: a broker compromise would
then hand over the CA keys. The copies make OUT self-contained, so it also moves to a separate
broker host. The price is that a new CRL has to reach OUT: :func:`sync_revocation` does that.

**Access control.** Logins are certificates only: ``use_identity_as_username`` makes the
certificate's CN the username and ``use_username_as_clientid`` makes it the client id too, so a
unit holds exactly one session and a second login with the same certificate takes it over. The
ACL gives a unit (``pattern``, ``%u`` = its CN) write access to its own ``status``, ``clips``,
``events`` and ``telemetry`` and read access to its own ``cmd/arm``, ``receipts`` and ``qc``
(quality-control verdicts); the receiver (``user <receiver_id>``) reads the whole site and
writes only ``cmd/arm``, ``receipts`` and ``qc``. Patterns apply to every user, the receiver
included, so the receiver's own name is denied as a unit subtree (provisioning already refuses
a unit with the receiver's id). Several receivers sharing the work through ``$share/<group>/...``
each need their own certificate and CN: with the same one they would keep taking over each
other's session. A broker configured before the ``qc`` kind existed needs its ACL written again
(``painav provision broker-config``) and a reload before units receive verdicts.

What Mosquitto 2.0 (checked with 2.0.11, Debian 12) does with that ACL, found by experiment:

- PUBLISH outside the rights is dropped; an MQTT v5 client gets PUBACK 0x87 (not authorised) for
  QoS 1 and stays connected. A last will is checked when it is sent, not at CONNECT.
- SUBSCRIBE is *not* checked by ``acl_file`` (its plugin says "FIXME - implement ACL subscription
  strings"): a unit subscribing to ``#`` or to another unit's receipts gets a SUBACK that grants
  the QoS, and then read access is checked per message, retained ones included, so nothing it may
  not read is ever delivered. ``$share/...`` subscriptions go through the same per-message check.

**Revocation, and how Mosquitto reloads it.** On SIGHUP (``systemctl reload mosquitto``)
Mosquitto 2.0.11 re-reads the ACL and rebuilds each TLS listener's context from ``cafile``,
``certfile``, ``keyfile`` and ``crlfile``; new connections are then checked against the new CRL.
Found by experiment:

- Connections that are already open are *not* checked again: a revoked unit that was online
  stays online. So :func:`sync_revocation` also writes ``user <id>`` / ``topic deny #`` for every
  revoked unit into the ACL; after the same reload that session can neither publish nor receive.
- A CRL that does not parse at reload is logged and then *ignored*: the listener runs on with no
  revocation checking at all (fail-open). A key the broker user cannot read at reload breaks the
  listener for every new connection. So the CRL is checked before it is installed and replaced
  atomically, and the key stays readable by the broker's group.
- An expired CRL makes OpenSSL refuse every certificate of its CA: the whole fleet, and the
  receiver, are locked out. ``painav provision crl refresh`` re-issues the CRLs weeks before their
  nextUpdate; each refresh must be followed by :func:`sync_revocation` and a reload.
- Without a reload nothing changes: the broker keeps the CRL it read at start.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.atomic import write_atomic
from protocol.message_codec import MAX_PAYLOAD_BYTES
from protocol.topics import ID_PATTERN, PREFIX, ROUTES, Direction, Kind

from .crl import read_revoked_receivers
from .errors import ProvisioningError
from .site import Report, Site, locked

__all__ = [
    "ACL_FILE",
    "CONFIG_FILE",
    "DEFAULT_USER",
    "MAX_PACKET_BYTES",
    "BrokerConfigError",
    "acl_text",
    "config_text",
    "sync_revocation",
    "write_broker_config",
]

CONFIG_FILE: Final = "mosquitto.conf"
ACL_FILE: Final = "painav.acl"
CA_FILE: Final = "ca.pem"
CRL_FILE: Final = "crl.pem"
CERT_FILE: Final = "broker.crt"
KEY_FILE: Final = "broker.key"
DATA_DIR: Final = "data"

DEFAULT_USER: Final = "mosquitto"
"""The account Mosquitto drops to when started as root (Debian's package creates it)."""

PACKET_OVERHEAD_BYTES: Final = 4096
"""Room above the largest payload for the fixed header, the topic and MQTT v5 properties."""

MAX_PACKET_BYTES: Final = max(MAX_PAYLOAD_BYTES.values()) + PACKET_OVERHEAD_BYTES
"""The largest MQTT packet the broker accepts: the largest painav message and its envelope."""

_ID_RE: Final = re.compile(ID_PATTERN)
_USER_RE: Final = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9.:%\-]{1,253}$")
_UNSAFE_PATH_RE: Final = re.compile(r"[\s\x00-\x1f\x7f]")
_CRL_MARKER: Final = b"-----BEGIN X509 CRL-----"


class BrokerConfigError(ProvisioningError, ValueError):
    """The broker configuration cannot be written: bad option, or the site's files are unusable."""


def _check_path(what: str, path: Path) -> Path:
    """*path* made absolute; refused if it would not survive as one mosquitto.conf value."""
    absolute = Path(os.path.abspath(path))
    if _UNSAFE_PATH_RE.search(str(absolute)):
        raise BrokerConfigError(f"{what} {str(absolute)!r}: has a space or control character")
    return absolute


def _site_topic(site: Site, who: str, kind: Kind) -> str:
    return f"{PREFIX}/{site.name}/{who}/{kind.value}"


def acl_text(
    site: Site, revoked: Iterable[str] = (), receivers: Iterable[str] | None = None
) -> str:
    """The ACL file for *site*; *revoked* unit ids lose all access, even in an open session.
    *receivers* are the site's receiver ids (default: the first one alone)."""
    receiver_ids = [site.receiver_id] if receivers is None else list(receivers)
    for value in (site.name, *receiver_ids, *revoked):
        if not _ID_RE.fullmatch(value):
            raise BrokerConfigError(f"id {value!r} cannot appear in the ACL (not a painav id)")
    to_hospital = [k for k, r in ROUTES.items() if r.direction is Direction.UNIT_TO_HOSPITAL]
    to_unit = [k for k, r in ROUTES.items() if r.direction is Direction.HOSPITAL_TO_UNIT]
    lines = [
        f"# painav broker ACL for site {site.name}: made by 'painav provision broker-config'.",
        "# Regenerated on every revocation; edits are lost. Mosquitto 2.0 checks writes when a",
        "# message is published and reads when it is delivered (not at SUBSCRIBE).",
        "",
        "# Units. %u is the unit's certificate CN, its device id (use_identity_as_username).",
        "# Patterns hold for every client, the receivers too: their own names are denied below.",
    ]
    lines += [f"pattern write {_site_topic(site, '%u', k)}" for k in to_hospital]
    lines += [f"pattern read {_site_topic(site, '%u', k)}" for k in to_unit]
    lines += [
        "",
        "# Receivers read every unit and send arm commands, receipts and QC verdicts; they can",
        "# never publish as a unit. Deny lines are checked first.",
    ]
    for receiver in receiver_ids:
        lines += [
            f"user {receiver}",
            f"topic deny {PREFIX}/{site.name}/{receiver}/#",
            f"topic read {PREFIX}/{site.name}/#",
        ]
        lines += [f"topic write {_site_topic(site, '+', k)}" for k in to_unit]
    revoked_ids = sorted(set(revoked))
    if revoked_ids:
        lines += [
            "",
            "# Revoked units. The CRL refuses their new connections; these lines strip a session",
            "# that was open at revocation of all access once the broker reloads.",
        ]
        for device_id in revoked_ids:
            lines += [f"user {device_id}", "topic deny #"]
    return "\n".join(lines) + "\n"


def config_text(
    site: Site,
    out: Path,
    *,
    port: int = 8883,
    bind: str = "0.0.0.0",
    data_dir: Path | None = None,
    user: str = DEFAULT_USER,
) -> str:
    """The ``mosquitto.conf`` for *site*, naming the files in *out* by absolute path."""
    if not 1 <= port <= 65535:
        raise BrokerConfigError(f"port {port}: must be 1-65535")
    if not _HOST_RE.fullmatch(bind):
        raise BrokerConfigError(f"bind address {bind!r}: not an IP address or host name")
    if not _USER_RE.fullmatch(user):
        raise BrokerConfigError(f"user {user!r}: not a system account name")
    out = _check_path("output folder", out)
    data = _check_path("data folder", data_dir if data_dir is not None else out / DATA_DIR)
    return f"""\
# Mosquitto 2.0 configuration for painav site {site.name}: made by 'painav provision broker-config'.
# Regenerate instead of editing. After 'painav provision crl refresh' or a revocation, install the
# new CRL and ACL here (provisioning.broker.sync_revocation), then 'systemctl reload mosquitto'
# (SIGHUP): Mosquitto re-reads {ACL_FILE} and {CRL_FILE} only then.

# Started as root, drop to this account before any file below is opened; it must be able to read
# them (the key through its group) and to write the data folder.
user {user}
# One set of security settings for all listeners: a listener added later still gets the ACL.
per_listener_settings false
# No login without a site certificate: there are no passwords and no anonymous clients.
allow_anonymous false
# Units publish and read only in their own subtree; the receiver reads all, sends arm commands
# and receipts. Generated from protocol.topics.ROUTES.
acl_file {out / ACL_FILE}

# Queued QoS 1 messages (receipts for a unit that is off) and retained ones (status, cmd/arm)
# survive a restart.
persistence true
persistence_location {data}
# Save every minute, not every 30: a crash loses at most a minute of queued messages, and the
# units' own outboxes re-announce anything not yet receipted.
autosave_interval 60
# Per offline client. Beyond this a unit misses receipts and its outbox re-announces the clips.
max_queued_messages 1000
# Drop sessions of units silent for a month (lost, decommissioned) with their queues.
persistent_client_expiration 30d
# The largest painav payload (a clip announcement, protocol.messages.MAX_PAYLOAD_BYTES) plus room
# for topic and header. A client sending a bigger packet is disconnected before it is buffered.
# Not message_size_limit: Mosquitto 2.0 answers that with a PUBACK code (0x95) that MQTT v5 does
# not allow in a PUBACK, so paho drops the connection and resends the message, again and again.
max_packet_size {MAX_PACKET_BYTES}
# A unit that dies without a word is noticed, and its will ("offline") sent, within 1.5 x this.
max_keepalive 120

# To the journal under systemd. Connections and refusals are logged with the certificate CN, a
# pseudonymous unit id; payloads never are. Subscriptions are few (made at each connect) and,
# since the ACL does not refuse them, the log is where a unit subscribing to '#' shows. Refused
# publishes appear only with 'log_type debug', which logs every packet: for troubleshooting.
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S

# The only listener: MQTT over TLS with a client certificate. There is no plaintext port.
# Address and port: 'painav provision broker-config --listen ADDRESS --port PORT'.
listener {port} {bind}
protocol mqtt
# TLS 1.3 only: every client is painav's own (OpenSSL 3 on the units and the hospital hosts), all
# its cipher suites are AEAD with forward secrecy, and the client certificate, which names the
# unit, travels encrypted.
tls_version tlsv1.3
# painav publishes at QoS 0 and 1; QoS 2 is never needed.
max_qos 1
# Client certificates must chain to the site root (units through the device CA).
cafile {out / CA_FILE}
certfile {out / CERT_FILE}
keyfile {out / KEY_FILE}
# Revoked units and services; re-read on reload. Must never expire: see 'crl refresh'.
crlfile {out / CRL_FILE}
# A client without a valid certificate fails the TLS handshake, before any MQTT.
require_certificate true
# The certificate CN is the username the ACL sees ...
use_identity_as_username true
# ... and the client id: one session per unit; a second login with its certificate takes over.
use_username_as_clientid true
"""


def _load_crls(site: Site) -> tuple[bytes, datetime]:
    """The site's CRL file, checked: one valid, unexpired CRL for each CA in the bundle.

    Returns the file's bytes and the earliest nextUpdate. Mosquitto ignores a CRL file it cannot
    parse at reload (and runs on without revocation), so nothing unchecked may be installed.
    """
    path = site.paths.crl
    try:
        data = path.read_bytes()
        crls = [x509.load_pem_x509_crl(_CRL_MARKER + p) for p in data.split(_CRL_MARKER)[1:]]
        cas = x509.load_pem_x509_certificates(site.paths.ca_bundle.read_bytes())
    except OSError as exc:
        raise BrokerConfigError(f"{exc.filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise BrokerConfigError(f"{path} or {site.paths.ca_bundle}: not PEM ({exc})") from None
    now = datetime.now(UTC)
    for ca in cas:
        name = ca.subject.rfc4514_string()
        mine = [c for c in crls if c.issuer == ca.subject]
        if not mine:
            raise BrokerConfigError(f"{path}: no CRL of {name}; its certificates would fail")
        for crl in mine:
            public_key = ca.public_key()
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or not (
                crl.is_signature_valid(public_key)
            ):
                raise BrokerConfigError(f"{path}: the CRL of {name} is not signed by it")
            if crl.next_update_utc is None or crl.next_update_utc <= now:
                raise BrokerConfigError(
                    f"{path}: the CRL of {name} has expired and would lock out every client; "
                    "run 'painav provision crl refresh' first"
                )
    if len(crls) != len(cas):
        raise BrokerConfigError(f"{path}: {len(crls)} CRLs for {len(cas)} CAs")
    return data, min(c.next_update_utc for c in crls if c.next_update_utc is not None)


def _load_broker_credentials(site: Site) -> tuple[bytes, bytes]:
    """The broker certificate and key, checked to belong together."""
    try:
        cert_data = site.paths.broker_cert.read_bytes()
        key_data = site.paths.broker_key.read_bytes()
    except OSError as exc:
        raise BrokerConfigError(f"{exc.filename}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
        key = serialization.load_pem_private_key(key_data, password=None)
    except ValueError as exc:
        raise BrokerConfigError(f"broker certificate or key: not PEM ({exc})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise BrokerConfigError(
            f"{site.paths.broker_key}: does not belong to {site.paths.broker_cert}"
        )
    return cert_data, key_data


def _current_acl(site: Site) -> tuple[str, list[str]]:
    """The ACL for the registry as it is now, and the revoked unit ids it names."""
    registry = site.registry()
    revoked = [d for d, entry in registry.devices.items() if entry.status == "revoked"]
    # A revoked receiver loses its receiver lines and, like a revoked unit, all access.
    gone = read_revoked_receivers(site)
    receivers = [r for r in registry.receiver_ids() if r not in gone]
    return acl_text(site, [*revoked, *gone], receivers), revoked


def _broker_account(user: str) -> tuple[int, int] | None:
    """uid and gid of *user* if this process (root) must hand files to it, else None.

    Not root: Mosquitto runs as whoever starts it, the same user that owns the files.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _searchable_by(directory: Path, uid: int, gid: int) -> bool:
    """Whether the account *uid*:*gid* may pass through *directory* (plain mode bits)."""
    if uid == 0:
        return True
    st = directory.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid or st.st_gid in os.getgrouplist(pwd.getpwuid(uid).pw_name, gid):
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _check_outside_site(site: Site, folders: Iterable[Path]) -> None:
    """Refuse broker folders inside the site folder: that holds the CA keys, for root alone."""
    site_dir = Path(os.path.abspath(site.dir))
    for folder in folders:
        if folder == site_dir or site_dir in folder.parents:
            raise BrokerConfigError(
                f"{folder}: inside the site folder {site_dir}, which holds the CA keys and must "
                f"stay root's alone; choose a folder such as /etc/painav/broker"
            )


def _check_reachable(folders: Iterable[Path], user: str, uid: int, gid: int) -> None:
    """Refuse folders the broker account could not reach: Mosquitto would fail at start."""
    for folder in folders:
        for parent in [p for p in folder.parents if p.exists()]:
            if not _searchable_by(parent, uid, gid):
                raise BrokerConfigError(
                    f"{folder}: the broker account {user!r} cannot pass through {parent}; "
                    f"choose a folder such as /etc/painav/broker"
                )


def write_broker_config(
    site: Site,
    out: Path,
    *,
    port: int = 8883,
    bind: str = "0.0.0.0",
    data_dir: Path | None = None,
    user: str = DEFAULT_USER,
    report: Report = lambda _: None,
) -> list[Path]:
    """Write the Mosquitto configuration of *site* into *out*; return the files written.

    *port* and *bind* are the TLS listener's; *data_dir* (default ``OUT/data``) holds the
    persistence file; *user* is the account Mosquitto drops to when started as root (give
    ``root`` only where no such account exists: a broker bug then runs with every privilege).
    Every file is replaced atomically and ``mosquitto.conf`` last, so an interrupted run leaves
    the previous configuration working. Run it on the broker host: as root it gives the key to
    *user*'s group and the data folder to *user*. For example::

        site = load_site(Path("/srv/painav/site"))
        write_broker_config(site, Path("/etc/painav/broker"), port=8883)
        # then: mosquitto -c /etc/painav/broker/mosquitto.conf
    """
    text = config_text(site, out, port=port, bind=bind, data_dir=data_dir, user=user)
    out = _check_path("output folder", out)
    data = _check_path("data folder", data_dir if data_dir is not None else out / DATA_DIR)
    with locked(site.dir):  # CRL and registry from one moment, not from either side of a change
        crl_data, next_update = _load_crls(site)
        acl, _ = _current_acl(site)
        cert_data, key_data = _load_broker_credentials(site)
        try:
            ca_data = site.paths.ca_bundle.read_bytes()
        except OSError as exc:
            raise BrokerConfigError(f"{exc.filename}: {exc.strerror}") from None
    _check_outside_site(site, (out, data))
    account = _broker_account(user)
    if account is not None:
        _check_reachable((out, data), user, *account)
    if os.geteuid() == 0 and account is None:
        report(
            f"warning: no account {user!r} here; on the broker host give {KEY_FILE} to its group "
            f"(chgrp {user} {out / KEY_FILE}; chmod 640) and {data} to it (chown {user})"
        )

    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o755)  # the broker user must reach the files; only the key is secret
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data, 0o700)
    if account is not None:
        os.chown(data, *account)

    key_path = out / KEY_FILE
    if account is None:
        write_atomic(key_path, key_data, mode=0o600, overwrite=True)
    else:
        # Owned by root, readable by the broker's group: it can read the key but not replace it.
        _write_group_readable(key_path, key_data, account[1])

    written = [key_path]
    for name, content in (
        (CERT_FILE, cert_data),
        (CA_FILE, ca_data),
        (CRL_FILE, crl_data),
        (ACL_FILE, acl.encode()),
        (CONFIG_FILE, text.encode()),
    ):
        write_atomic(out / name, content, mode=0o644, overwrite=True)
        written.append(out / name)
    report(f"broker CRL valid until {next_update:%Y-%m-%d %H:%M} UTC")
    return written


def _write_group_readable(path: Path, data: bytes, gid: int) -> None:
    """Write a key as root:*gid* 0640, atomically, never readable by others on the way."""
    write_atomic(path, data, mode=0o600, overwrite=True)
    os.chown(path, 0, gid)
    os.chmod(path, 0o640)


def sync_revocation(site: Site, out: Path, *, report: Report = lambda _: None) -> list[Path]:
    """Install the site's current CRL and revoked-unit ACL into the broker folder *out*.

    Run it after every ``crl refresh`` and ``device revoke``, then reload the broker
    (``systemctl reload mosquitto``, i.e. SIGHUP): new connections of revoked units fail the
    handshake, and an open session of a revoked unit loses all access. The CRL is checked
    (parses, signed by its CA, one per CA, unexpired) before it replaces the old one.
    """
    out = _check_path("broker folder", out)
    if not (out / CONFIG_FILE).is_file():
        raise BrokerConfigError(f"{out}: no {CONFIG_FILE}; run 'painav provision broker-config'")
    try:
        same_site = (out / CA_FILE).read_bytes() == site.paths.ca_bundle.read_bytes()
    except OSError as exc:
        raise BrokerConfigError(f"{exc.filename}: {exc.strerror}") from None
    if not same_site:
        raise BrokerConfigError(
            f"{out / CA_FILE}: not the CAs of site {site.name}; this broker belongs to another site"
        )
    with locked(site.dir):
        crl_data, next_update = _load_crls(site)
        acl, revoked = _current_acl(site)
    # The ACL first: were the CRL replaced and the ACL not, a reload would let a revoked unit's
    # open session keep its access.
    write_atomic(out / ACL_FILE, acl.encode(), mode=0o644, overwrite=True)
    write_atomic(out / CRL_FILE, crl_data, mode=0o644, overwrite=True)
    report(
        f"broker CRL valid until {next_update:%Y-%m-%d %H:%M} UTC, {len(revoked)} unit(s) "
        f"denied; now reload the broker: systemctl reload mosquitto"
    )
    return [out / ACL_FILE, out / CRL_FILE]
