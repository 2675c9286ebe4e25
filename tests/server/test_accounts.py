"""The dashboard's accounts in the catalog (SQLite and PostgreSQL): roles, sessions with an idle
timeout, the login throttle's memory, disabling, and the audit of each; and the CLI IT uses."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from painav.cli import main
from provisioning.site import init_site
from provisioning.web import provision_web
from server.catalog import Catalog
from server.catalog.accounts import AccountError
from server.web.auth import Login, hash_password, scopes, throttle_delay, token_sha256


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked(db_url: str) -> Iterator[tuple[Catalog, Clock]]:
    clock = Clock()
    with Catalog(db_url, actor="test", clock=clock) as catalog:
        yield catalog, clock


def test_roles_names_and_duplicates(catalog: Catalog) -> None:
    catalog.add_user("alice", "researcher", hash_password("a long password"))
    with pytest.raises(AccountError, match="exists already"):
        catalog.add_user("alice", "viewer", "x")
    with pytest.raises(AccountError, match="role 'owner'"):
        catalog.add_user("bob", "owner", "x")
    with pytest.raises(AccountError, match="user name"):
        catalog.add_user("Robert'); --", "viewer", "x")
    with pytest.raises(AccountError, match="at least 12"):
        hash_password("short")
    assert [u.username for u in catalog.users()] == ["alice"]
    assert catalog.users()[0].password_hash.startswith("$argon2id$")


def test_scopes_grow_with_the_role() -> None:
    assert scopes("viewer") == ["authenticated", "viewer"]
    assert scopes("admin") == ["authenticated", "viewer", "researcher", "admin"]


def test_throttle_doubles_after_the_free_failures_up_to_the_cap() -> None:
    delays = [throttle_delay(n, free=5, max_delay_s=60) for n in range(12)]
    assert delays == [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60]


def test_sessions_end_when_idle_or_disabled(clocked: tuple[Catalog, Clock]) -> None:
    catalog, clock = clocked
    catalog.add_user("alice", "admin", hash_password("a long password"))
    login = Login(catalog, free_failures=5, max_delay_s=60, clock=clock)
    token = login.attempt("alice", "a long password", "10.0.0.7").token
    assert token is not None
    idle = timedelta(minutes=30)
    found = catalog.web_session(token_sha256(token), idle=idle)
    assert found is not None and found.role == "admin" and len(found.csrf_token) == 43
    clock.now += timedelta(minutes=20)
    assert catalog.web_session(token_sha256(token), idle=idle) is not None  # touched now
    clock.now += timedelta(minutes=29)
    assert catalog.web_session(token_sha256(token), idle=idle) is not None
    clock.now += timedelta(minutes=31)
    assert catalog.web_session(token_sha256(token), idle=idle) is None  # idle too long: ended
    again = login.attempt("alice", "a long password", "10.0.0.7").token
    assert again is not None
    catalog.disable_user("alice")
    assert catalog.web_session(token_sha256(again), idle=idle) is None
    assert login.attempt("alice", "a long password", "10.0.0.7").token is None  # disabled
    actions = [e.action for e in catalog.audit.entries()]
    assert actions.count("web_login") == 2 and "web_user_disabled" in actions
    assert catalog.audit.verify().ok


def test_failures_are_counted_by_address_and_by_name(clocked: tuple[Catalog, Clock]) -> None:
    catalog, clock = clocked
    catalog.add_user("alice", "viewer", hash_password("a long password"))
    login = Login(catalog, free_failures=3, max_delay_s=60, clock=clock)
    for _ in range(3):
        assert login.attempt("alice", "wrong", "10.0.0.7").wait_s == 0
    # From another address the name is throttled too; a throttled try is not checked at all.
    throttled = login.attempt("alice", "a long password", "10.0.0.8")
    assert throttled.token is None and throttled.wait_s == pytest.approx(1.0)
    clock.now += timedelta(seconds=2)
    assert login.attempt("alice", "a long password", "10.0.0.8").token is not None
    # Signing in forgot the name's failures, and the new address's.
    assert catalog.login_failures(["user:alice", "ip:10.0.0.8"]) == (0, None)
    assert catalog.login_failures(["ip:10.0.0.7"])[0] == 3
    failed = [e for e in catalog.audit.entries() if e.action == "web_login_failed"]
    assert len(failed) == 3 and failed[0].detail == {"username": "alice", "client": "10.0.0.7"}


def test_an_unknown_user_costs_the_same_check(clocked: tuple[Catalog, Clock]) -> None:
    catalog, clock = clocked
    login = Login(catalog, free_failures=5, max_delay_s=60, clock=clock)
    assert login.attempt("nobody", "whatever", "10.0.0.9").token is None
    assert catalog.login_failures(["user:nobody"])[0] == 1


def test_the_cli_adds_changes_and_disables_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = init_site(tmp_path / "site", "ward7", broker_hosts=("127.0.0.1",))
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    folder = provision_web(site, hosts=["dash.ward7.example"], catalog_url=url,
                           features_dir=tmp_path / "f", registry=site.paths.registry)  # fmt: skip
    config = str(folder / "web.toml")
    assert (folder / "tls.key").stat().st_mode & 0o077 == 0
    assert (folder / "metrics-token").stat().st_mode & 0o077 == 0

    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["web", "adduser", "alice", "--role", "researcher", "--password-stdin",
                 "--config", config]) == 0  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["web", "passwd", "alice", "--password-stdin", "--config", config]) == 1
    assert "at least 12 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
    assert main(["web", "passwd", "alice", "--password-stdin", "--config", config]) == 0
    assert main(["web", "disable", "alice", "--config", config]) == 0
    assert main(["web", "disable", "bob", "--config", config]) == 1
    assert "no user 'bob'" in capsys.readouterr().err
    with Catalog(url) as catalog:
        [alice] = catalog.users()
        assert alice.disabled_at is not None
        actions = [(e.action, e.actor.split(":")[0]) for e in catalog.audit.entries()]
    assert actions == [("web_user_added", "os"), ("web_password_set", "os"),
                       ("web_user_disabled", "os")]  # fmt: skip
