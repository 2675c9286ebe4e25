"""The dashboard's accounts, sessions and failed logins in the catalog, each change audited.

Only hashes arrive here: the web layer (:mod:`server.web.auth`) hashes passwords with Argon2id
and session cookies with SHA-256 before the catalog sees them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..audit import AuditLog
from .account_models import LoginFailures, WebSession, WebUser
from .errors import CatalogError

__all__ = ["ROLES", "AccountError", "AccountsMixin", "SessionRecord", "UserRecord"]

ROLES: Final = ("viewer", "researcher", "admin")
"""Each role may do what the ones before it may."""
_USERNAME: Final = re.compile(r"[a-z][a-z0-9._-]{0,31}")


class AccountError(CatalogError, ValueError):
    """A bad user name or role, an unknown user, or a user who exists already."""


@dataclass(frozen=True)
class UserRecord:
    username: str
    role: str
    password_hash: str
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True)
class SessionRecord:
    username: str
    role: str
    csrf_token: str
    created_at: datetime


class AccountsMixin:
    """The :class:`~server.catalog.Catalog`'s methods for dashboard accounts."""

    audit: AuditLog
    _actor: str
    _clock: Callable[[], datetime]
    _session: Callable[..., AbstractContextManager[Session]]  # the Catalog's transaction

    def add_user(self, username: str, role: str, password_hash: str) -> UserRecord:
        """A new account; :class:`AccountError` if the name is taken or the role unknown."""
        _check(username, role)
        now = self._clock()
        with self._session(write=True) as s:
            if s.get(WebUser, username) is not None:
                raise AccountError(f"user {username!r} exists already")
            row = WebUser(username=username, role=role, password_hash=password_hash,
                          created_at=now, password_changed_at=now, disabled_at=None)  # fmt: skip
            s.add(row)
            detail = {"username": username, "role": role}
            self.audit.append(s, "web_user_added", actor=self._actor, detail=detail)
            return _user(row)

    def set_password(self, username: str, password_hash: str) -> None:
        """Replace *username*'s password (and enable the account); their sessions end."""
        with self._session(write=True) as s:
            row = _get(s, username)
            row.password_hash = password_hash
            row.password_changed_at = self._clock()
            row.disabled_at = None
            s.execute(delete(WebSession).where(WebSession.username == username))
            detail = {"username": username}
            self.audit.append(s, "web_password_set", actor=self._actor, detail=detail)

    def disable_user(self, username: str) -> None:
        """Disable *username*: no more logins, and their sessions end now."""
        with self._session(write=True) as s:
            row = _get(s, username)
            row.disabled_at = row.disabled_at or self._clock()
            s.execute(delete(WebSession).where(WebSession.username == username))
            detail = {"username": username}
            self.audit.append(s, "web_user_disabled", actor=self._actor, detail=detail)

    def user(self, username: str) -> UserRecord | None:
        with self._session(write=False) as s:
            row = s.get(WebUser, username)
            return None if row is None else _user(row)

    def users(self) -> list[UserRecord]:
        with self._session(write=False) as s:
            return [_user(r) for r in s.scalars(select(WebUser).order_by(WebUser.username))]

    def login_failures(self, keys: Iterable[str]) -> tuple[int, datetime | None]:
        """The most failed logins in a row under any of *keys*, and the last one's time."""
        with self._session(write=False) as s:
            rows = list(s.scalars(select(LoginFailures).where(LoginFailures.key.in_(list(keys)))))
        if not rows:
            return 0, None
        return max(r.failures for r in rows), max(r.last_failure_at for r in rows)

    def record_login_failure(self, keys: Iterable[str], *, username: str, client: str) -> None:
        """Count a failed login under each of *keys*, and audit it."""
        now = self._clock()
        with self._session(write=True) as s:
            for key in keys:
                row = s.get(LoginFailures, key, with_for_update=True)
                if row is None:
                    s.add(LoginFailures(key=key, failures=1, last_failure_at=now))
                else:
                    row.failures += 1
                    row.last_failure_at = now
            detail = {"username": username[:32], "client": client[:64]}
            self.audit.append(s, "web_login_failed", actor="web", detail=detail)

    def start_session(
        self, username: str, *, token_sha256: str, csrf_token: str, client: str, keys: Iterable[str]
    ) -> SessionRecord:
        """A signed-in session for *username*; the failures under *keys* are forgotten."""
        now = self._clock()
        with self._session(write=True) as s:
            user = _get(s, username)
            s.execute(delete(LoginFailures).where(LoginFailures.key.in_(list(keys))))
            s.add(WebSession(token_sha256=token_sha256, username=username, csrf_token=csrf_token,
                             client=client[:64], created_at=now, last_seen_at=now))  # fmt: skip
            detail = {"client": client[:64]}
            self.audit.append(s, "web_login", actor=f"web:{username}", detail=detail)
            return SessionRecord(username, user.role, csrf_token, now)

    def web_session(self, token_sha256: str, *, idle: timedelta) -> SessionRecord | None:
        """The live session with this cookie hash, now touched; None if unknown, idle for longer
        than *idle* (then it is ended), or its user is disabled."""
        now = self._clock()
        with self._session(write=True) as s:
            row = s.get(WebSession, token_sha256)
            if row is None:
                return None
            user = s.get(WebUser, row.username)
            if user is None or user.disabled_at is not None or now - row.last_seen_at > idle:
                s.delete(row)
                return None
            # Written at most once a minute: every request of every page reads a session.
            if now - row.last_seen_at > min(timedelta(minutes=1), idle / 10):
                row.last_seen_at = now
            return SessionRecord(row.username, user.role, row.csrf_token, row.created_at)

    def end_session(self, token_sha256: str) -> None:
        with self._session(write=True) as s:
            row = s.get(WebSession, token_sha256)
            if row is not None:
                s.delete(row)
                self.audit.append(s, "web_logout", actor=f"web:{row.username}")


def _check(username: str, role: str) -> None:
    if not _USERNAME.fullmatch(username):
        raise AccountError(
            f"user name {username!r:.40}: 1-32 of a-z 0-9 . _ -, starting with a letter"
        )
    if role not in ROLES:
        raise AccountError(f"role {role!r:.20}: one of {', '.join(ROLES)}")


def _get(s: Session, username: str) -> WebUser:
    row = s.get(WebUser, username, with_for_update=True)
    if row is None:
        raise AccountError(f"no user {username!r:.40}")
    return row


def _user(row: WebUser) -> UserRecord:
    return UserRecord(row.username, row.role, row.password_hash, row.created_at, row.disabled_at)
