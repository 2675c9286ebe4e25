"""What every page handler shares: the catalog, the config, the templates, and the two wrappers
that make a function a page (a signed-in role reads) or an action (a role changes something,
with the form's CSRF token)."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.templating import Jinja2Templates

from protocol.registry import Registry
from protocol.web_config import WebConfig

from ..catalog import Catalog
from .auth import WebUser, check_csrf

__all__ = ["Web", "action", "page"]

TEMPLATES: Final = Path(__file__).with_name("templates")
Handler = Callable[..., Response]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Web:
    """The app's state, one per process."""

    config: WebConfig
    catalog: Catalog
    clock: Callable[[], datetime] = _utc_now
    templates: Jinja2Templates = field(
        default_factory=lambda: Jinja2Templates(directory=str(TEMPLATES))
    )
    _registry: tuple[float, Registry] | None = None

    def registry(self) -> Registry:
        """The unit registry, read again when provisioning has changed it."""
        path = self.config.site.registry
        mtime = os.stat(path).st_mtime
        if self._registry is None or self._registry[0] != mtime:
            self._registry = (mtime, Registry.load(path))
        return self._registry[1]

    def as_user(self, request: Request) -> Catalog:
        """The catalog with the signed-in person as the actor of what they change."""
        return self.catalog.acting_as(f"web:{user(request).username}")

    def render(
        self, request: Request, name: str, context: Mapping[str, Any], status: int = 200
    ) -> HTMLResponse:
        signed_in = request.user if request.user.is_authenticated else None
        return self.templates.TemplateResponse(
            request,
            name,
            {
                "user": signed_in,
                "now": self.clock(),
                "video_roles": self.config.video.roles,
                **context,
            },
            status_code=status,
        )


def user(request: Request) -> WebUser:
    signed_in = request.user
    assert isinstance(signed_in, WebUser)  # the login middleware let no one else through
    return signed_in


def _refused(request: Request, role: str) -> Response:
    who = user(request)
    return PlainTextResponse(f"refused: {who.username} is a {who.role}; this needs {role}", 403)


def page(role: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A GET handler for *role* and above; the sync handler runs on a worker thread."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            if role not in request.auth.scopes:
                return _refused(request, role)
            return await run_in_threadpool(handler, request)

        return endpoint

    return wrap


def action(role: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A POST handler for *role* and above: refused unless the form (or the ``X-CSRF-Token``
    header, for htmx) carries the session's CSRF token. The handler gets the form."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            form: FormData = await request.form(max_files=0, max_fields=50)
            given = form.get("csrf") or request.headers.get("x-csrf-token")
            if not check_csrf(user(request).csrf_token, given if isinstance(given, str) else None):
                return PlainTextResponse("refused: the form's CSRF token is missing or wrong", 403)
            if role not in request.auth.scopes:
                return _refused(request, role)
            return await run_in_threadpool(handler, request, form)

        return endpoint

    return wrap
