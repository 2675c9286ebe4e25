"""``painav web …``: run the dashboard, and manage its accounts (adduser, passwd, disable)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.catalog import Catalog


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/painav/web.toml"),
        help="the dashboard's config (default: %(default)s)",
    )
    web = commands.add_parser("web", help="the dashboard for researchers and IT")
    sub = web.add_subparsers(dest="web_command", required=True, metavar="ACTION")

    run_ = sub.add_parser("run", parents=[common], help="serve the dashboard over HTTPS")
    run_.set_defaults(handler="painav.webcmd:run")

    password = argparse.ArgumentParser(add_help=False)
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (one line) instead of asking twice",
    )
    adduser = sub.add_parser("adduser", parents=[common, password], help="add an account")
    adduser.add_argument("username")
    adduser.add_argument("--role", required=True, choices=("viewer", "researcher", "admin"))
    adduser.set_defaults(handler="painav.webcmd:adduser")

    passwd = sub.add_parser("passwd", parents=[common, password], help="set a new password")
    passwd.add_argument("username")
    passwd.set_defaults(handler="painav.webcmd:passwd")

    disable = sub.add_parser("disable", parents=[common], help="disable an account now")
    disable.add_argument("username")
    disable.set_defaults(handler="painav.webcmd:disable")


def _catalog(args: argparse.Namespace) -> Catalog:
    from protocol.tomlconfig import load_toml
    from protocol.web_config import WebConfig
    from server.catalog import Catalog

    config = load_toml(args.config, WebConfig)
    return Catalog(config.catalog.url, actor=f"os:{getpass.getuser()}"[:64])


def _password(args: argparse.Namespace) -> str:
    from server.catalog.accounts import AccountError
    from server.web.auth import hash_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise AccountError("the two passwords differ; nothing changed")
    return hash_password(password)


def adduser(args: argparse.Namespace) -> int:
    hashed = _password(args)
    with _catalog(args) as catalog:
        catalog.add_user(args.username, args.role, hashed)
    print(f"added {args.username} ({args.role})")
    return 0


def passwd(args: argparse.Namespace) -> int:
    hashed = _password(args)
    with _catalog(args) as catalog:
        catalog.set_password(args.username, hashed)
    print(f"new password for {args.username}; their sessions are ended")
    return 0


def disable(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        catalog.disable_user(args.username)
    print(f"disabled {args.username}; their sessions are ended")
    return 0


def run(args: argparse.Namespace) -> int:
    from protocol.tomlconfig import load_toml
    from protocol.web_config import WebConfig
    from server.web.serve import serve

    serve(load_toml(args.config, WebConfig))
    return 0
