"""The dashboard's tables as SQLAlchemy ORM models: accounts, their sessions, and failed logins.

A password is stored only as its Argon2id hash and a session only as the SHA-256 of its cookie,
so a copy of the catalog opens no one's account. Migration 0005 creates these tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base

__all__ = ["LoginFailures", "WebSession", "WebUser"]


class WebUser(Base):
    """A dashboard account: a local user name, a role, an Argon2id password hash."""

    __tablename__ = "web_users"

    username: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("role IN ('viewer', 'researcher', 'admin')", name="role"),)


class WebSession(Base):
    """A signed-in browser: the SHA-256 of its cookie, its CSRF token, when it was last used."""

    __tablename__ = "web_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(32), ForeignKey("web_users.username"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class LoginFailures(Base):
    """Failed logins in a row, by client address and by user name (``ip:…``, ``user:…``)."""

    __tablename__ = "web_login_failures"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime]
