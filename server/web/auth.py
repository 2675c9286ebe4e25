"""Who is signed in: Argon2id passwords, server-side sessions behind a cookie, CSRF tokens, the
login throttle, and roles as Starlette authentication scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from ..catalog import Catalog
from ..catalog.accounts import ROLES, AccountError, SessionRecord

__all__ = [
    "COOKIE",
    "Login",
    "SessionBackend",
    "WebUser",
    "check_csrf",
    "hash_password",
    "scopes",
    "throttle_delay",
]

COOKIE: Final = "__Host-painav"
"""The session cookie; the ``__Host-`` prefix makes browsers insist on Secure, Path=/, no Domain."""
_HASHER: Final = PasswordHasher()  # Argon2id, RFC 9106's second recommended parameters
# A hash to check against when the user does not exist, so that the answer takes as long.
_DUMMY: Final = _HASHER.hash(secrets.token_hex(16))
MIN_PASSWORD: Final = 12
LOGINS = Counter("painav_web_logins_total", "Dashboard sign-in attempts by outcome", ["outcome"])


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters; nothing changed")
    return _HASHER.hash(password)


def _password_ok(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def scopes(role: str) -> list[str]:
    """A role's scopes: itself and every role below it, so ``requires("researcher")`` admits
    an admin."""
    return ["authenticated", *ROLES[: ROLES.index(role) + 1]]


def throttle_delay(failures: int, *, free: int, max_delay_s: float) -> float:
    """Seconds to wait after the last failed login before another is checked: none for the first
    *free* failures in a row, then 1, 2, 4 … up to *max_delay_s*."""
    if failures < free:
        return 0.0
    return float(min(max_delay_s, 2 ** min(failures - free, 30)))


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_csrf(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


@dataclass(frozen=True)
class WebUser(BaseUser):
    """The signed-in person, as Starlette's ``request.user``."""

    username: str
    role: str
    csrf_token: str
    token_hash: str

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.username


class SessionBackend(AuthenticationBackend):
    """Starlette's authentication backend: the session cookie to a user and their scopes."""

    def __init__(self, catalog: Catalog, idle: timedelta) -> None:
        self._catalog = catalog
        self._idle = idle

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, WebUser] | None:
        token = conn.cookies.get(COOKIE)
        if not token or len(token) > 128:
            return None
        digest = token_sha256(token)
        found: SessionRecord | None = await run_in_threadpool(
            self._catalog.web_session, digest, idle=self._idle
        )
        if found is None:
            return None
        user = WebUser(found.username, found.role, found.csrf_token, digest)
        return AuthCredentials(scopes(found.role)), user


@dataclass(frozen=True)
class LoginResult:
    token: str | None  # the new session cookie when signed in
    wait_s: float = 0.0  # when throttled: how long to wait


class Login:
    """Checks a user name and password, throttled by address and by user name."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        free_failures: int,
        max_delay_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._catalog = catalog
        self._free = free_failures
        self._max_delay = max_delay_s
        self._clock = clock

    def attempt(self, username: str, password: str, client: str) -> LoginResult:
        """Sign in, or say why not: a throttled attempt is refused before the password is
        checked, and does not count as another failure."""
        username = username.strip().lower()[:32]
        keys = [f"ip:{client}"[:80], f"user:{username}"]
        failures, last = self._catalog.login_failures(keys)
        delay = throttle_delay(failures, free=self._free, max_delay_s=self._max_delay)
        if last is not None and delay:
            wait = delay - (self._clock() - last).total_seconds()
            if wait > 0:
                LOGINS.labels("throttled").inc()
                return LoginResult(None, wait)
        user = self._catalog.user(username) if username else None
        ok = _password_ok(user.password_hash if user else _DUMMY, password)
        if user is None or not ok or user.disabled_at is not None:
            self._catalog.record_login_failure(keys, username=username, client=client)
            LOGINS.labels("failed").inc()
            return LoginResult(None)
        token = secrets.token_urlsafe(32)
        self._catalog.start_session(
            username,
            token_sha256=token_sha256(token),
            csrf_token=secrets.token_urlsafe(32),
            client=client,
            keys=keys,
        )
        LOGINS.labels("signed_in").inc()
        return LoginResult(token)
