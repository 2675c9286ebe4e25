"""The ``painav`` command: parses arguments and hands off to a subcommand, imported lazily.

Heavy modules (PyAV, SQLAlchemy, paho) are imported only by the subcommand that needs them, so
``painav --help`` and ``painav clip verify`` start fast on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="painav",
        description="Bedside capture of patient video and voice, encrypted at the source.",
    )
    parser.add_argument("--version", action="version", version=f"painav {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    clip = commands.add_parser("clip", help="check and open clip files (for data managers)")
    clip_commands = clip.add_subparsers(dest="clip_command", required=True, metavar="ACTION")

    verify = clip_commands.add_parser(
        "verify", help="check a clip's signature, its hash binding and its age header"
    )
    verify.add_argument("file", type=Path, help="the clip (.age)")
    key = verify.add_mutually_exclusive_group(required=True)
    key.add_argument("--pubkey", help="the unit's minisign public key: a .pub file or its key")
    key.add_argument(
        "--registry",
        type=Path,
        help="the site's registry.json: the key of the unit the signature names",
    )
    verify.add_argument("--sig", type=Path, help="signature file (default: FILE.minisig)")
    verify.add_argument("--clip-id", help="fail unless the signature names this clip id")
    verify.add_argument("--device-id", help="fail unless the signature names this unit")
    verify.set_defaults(handler="painav.clipcmd:verify")

    decrypt = clip_commands.add_parser(
        "decrypt", help="decrypt a clip with the data key (written only once fully authentic)"
    )
    decrypt.add_argument("file", type=Path, help="the clip (.age)")
    decrypt.add_argument(
        "-i", "--identity", required=True, type=Path, help="age identity file (data key)"
    )
    decrypt.add_argument("-o", "--output", required=True, help="output file, or - for stdout")
    check = decrypt.add_mutually_exclusive_group()
    check.add_argument("--pubkey", help="verify the unit's signature first (recommended)")
    check.add_argument(
        "--registry", type=Path, help="verify the signature first, with the key from registry.json"
    )
    decrypt.add_argument("--sig", type=Path, help="signature file (default: FILE.minisig)")
    decrypt.add_argument("--force", action="store_true", help="overwrite an existing output")
    decrypt.add_argument(
        "--audit",
        type=Path,
        metavar="EXTRACT_TOML",
        help="write the decrypt to the catalog's audit log first (needs --registry or --pubkey)",
    )
    decrypt.set_defaults(handler="painav.clipcmd:decrypt")

    from . import devicecmd, extractcmd, provisioncmd, receivercmd, researchcmd, webcmd

    devicecmd.add_parser(commands)
    receivercmd.add_parser(commands)
    extractcmd.add_parser(commands)
    provisioncmd.add_parser(commands)
    researchcmd.add_parser(commands)
    webcmd.add_parser(commands)

    demo = commands.add_parser(
        "demo", help="run the bedside-to-hospital path on one machine with embedded defaults"
    )
    demo.add_argument("--workdir", type=Path, help="keep every file the demo makes here")
    demo.add_argument("--clips", type=int, default=3, help="button presses (default 3)")
    demo.add_argument("--units", type=int, default=2, help="simulated units (default 2)")
    demo.add_argument("--seconds", type=float, default=4.0, help="length of each recording")
    demo.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C")
    # The hospital side on several processes (README, deploying with an S3 store).
    demo.add_argument("--receivers", type=int, default=1, help="receivers (default 1)")
    demo.add_argument("--workers", type=int, default=1, help="extraction workers (default 1)")
    demo.add_argument(
        "--store", choices=("local", "s3"), default="local", help="a folder, or SeaweedFS (S3)"
    )
    demo.set_defaults(handler="painav.demo:run")
    return parser


# Errors a person acts on, by module: looked up only in modules the command already loaded,
# so that naming them here imports nothing heavy.
_ERRORS = (
    ("protocol.errors", "ProtocolError"),
    ("provisioning.errors", "ProvisioningError"),
    ("daemon.hardware.base", "HardwareError"),
    ("daemon.outbox", "OutboxError"),
    ("daemon.control", "ControlError"),
    ("daemon.announcer", "AnnouncerError"),
    ("server.catalog.errors", "CatalogError"),
    ("server.store", "StoreError"),
    ("server.fetch", "FetchError"),
    ("server.mqtt", "ReceiverLinkError"),
    ("server.extract.worker", "ExtractError"),
    ("server.research.edc", "EdcError"),
    ("server.catalog.accounts", "AccountError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [OSError]
    for module_name, class_name in _ERRORS:
        module = sys.modules.get(module_name)
        if module is not None:
            found.append(getattr(module, class_name))
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    module_name, _, func_name = args.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args))
    except _user_errors() as exc:
        # One line a person can act on; the exception text already names what and where.
        print(f"painav: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
