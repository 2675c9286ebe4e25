"""The dashboard as an ASGI app: HTTPS-only headers, sign-in for every route, the pages, the
static files (installed from registries, served from here: the hospital network has no CDN),
``/metrics`` for Prometheus behind a bearer token, and ``/healthz``::

    app = create_app(Web(config, Catalog(config.catalog.url, actor="web")))
"""

from __future__ import annotations

import hmac
import time
from datetime import timedelta
from pathlib import Path
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import audit_pages, clip_pages, login_pages, study_pages, unit_pages
from .auth import SessionBackend
from .context import Web

__all__ = ["ASSETS", "create_app"]

STATIC: Final = Path(__file__).with_name("static")
ASSETS: Final = Path(__file__).with_name("assets") / "node_modules"
"""Scripts from the npm registry (scripts/setup.sh installs them from assets/package-lock.json)."""
PUBLIC: Final = ("/login", "/static/", "/assets/", "/healthz", "/metrics", "/favicon.ico")
"""Reachable without signing in; /metrics checks its own bearer token."""

_HEADERS: Final = [
    (b"strict-transport-security", b"max-age=31536000"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Scripts and styles only from here. Inline styles are allowed: matplotlib's SVG plots and
    # htmx's indicator carry style attributes, and a style cannot run code.
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; media-src 'self'; frame-ancestors 'none'; form-action 'self'; "
        b"base-uri 'none'",
    ),
]

REQUESTS = Histogram(
    "painav_web_request_seconds", "Dashboard requests by route and status", ["route", "status"]
)


class _Guard:
    """Every response gets the security headers; anyone not signed in gets only the public
    paths (a page sends them to the login, anything else is refused with 401)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        started = time.perf_counter()
        status = 500

        async def with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *_HEADERS]
            await send(message)

        try:
            user = scope.get("user")
            if not path.startswith(PUBLIC) and not (user and user.is_authenticated):
                refusal: Response
                if scope["method"] == "GET" and "hx-request" not in dict(scope["headers"]):
                    refusal = RedirectResponse(f"/login?next={path}", 303)
                else:
                    refusal = PlainTextResponse("refused: sign in first", 401)
                await refusal(scope, receive, with_headers)
                return
            await self.app(scope, receive, with_headers)
        finally:
            route = path if path.startswith(PUBLIC) else _route_label(path)
            REQUESTS.labels(route, str(status)).observe(time.perf_counter() - started)


def _route_label(path: str) -> str:
    """The route without ids, so that the metric's labels stay few."""
    parts = path.strip("/").split("/")
    return "/" + "/".join(parts[:1] + (["{id}"] if len(parts) > 1 else []))


def create_app(web: Web) -> Starlette:
    token_file = web.config.metrics.token_file
    token = token_file.read_text(encoding="ascii").strip() if token_file else None

    async def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "")
        if token is None or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return PlainTextResponse("refused: /metrics needs the bearer token", 401)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_request: Request) -> Response:
        # Says only whether the catalog answers: nothing about the site to someone not signed in.
        try:
            await run_in_threadpool(web.catalog.audit.head)
        except Exception:
            return PlainTextResponse("unavailable: the catalog does not answer", 503)
        return PlainTextResponse("ok")

    routes = [
        *login_pages.routes(web),
        *unit_pages.routes(web),
        *clip_pages.routes(web),
        *study_pages.routes(web),
        *audit_pages.routes(web),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/favicon.ico", lambda _request: Response(status_code=204), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Mount("/assets", StaticFiles(directory=ASSETS, check_dir=False), name="assets"),
    ]
    idle = timedelta(seconds=web.config.session.idle_timeout_s)
    middleware = [
        Middleware(AuthenticationMiddleware, backend=SessionBackend(web.catalog, idle)),
        Middleware(_Guard),
    ]
    return Starlette(routes=routes, middleware=middleware)
