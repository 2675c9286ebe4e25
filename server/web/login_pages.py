"""Signing in and out. The login form has no session yet, so its CSRF token is a double-submit
cookie; failed logins are throttled and audited (:class:`server.web.auth.Login`)."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .auth import COOKIE, Login, check_csrf
from .context import Web, action, user

__all__ = ["routes"]

_LOGIN_CSRF = "__Host-painav-login"


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never a redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def routes(web: Web) -> list[Route]:
    session = web.config.session
    login = Login(
        web.catalog,
        free_failures=session.free_failures,
        max_delay_s=session.max_delay_s,
        clock=web.clock,
    )

    def form(request: Request, *, error: str | None = None, status: int = 200) -> Response:
        # Kept if the browser has one: a second login page loading meanwhile (another tab, a
        # redirected favicon) must not invalidate the form already shown.
        token = request.cookies.get(_LOGIN_CSRF) or ""
        if len(token) != 43:
            token = secrets.token_urlsafe(32)
        context = {
            "csrf": token,
            "error": error,
            "next": _safe_next(request.query_params.get("next")),
        }
        response = web.render(request, "login.html", context, status)
        response.set_cookie(_LOGIN_CSRF, token, secure=True, httponly=True, samesite="strict")
        return response

    async def show(request: Request) -> Response:
        if request.user.is_authenticated:
            return RedirectResponse("/", 303)
        return form(request)

    async def submit(request: Request) -> Response:
        data = await request.form(max_files=0, max_fields=10)
        given = data.get("csrf")
        expected = request.cookies.get(_LOGIN_CSRF, "")
        if not expected or not check_csrf(expected, given if isinstance(given, str) else None):
            return form(request, error="The form expired: please sign in again.", status=403)
        username, password = str(data.get("username", "")), str(data.get("password", ""))
        client = request.client.host if request.client else "unknown"
        result = await run_in_threadpool(login.attempt, username, password[:1024], client)
        if result.wait_s:
            message = f"Too many failed logins: try again in {int(result.wait_s) + 1} s."
            return form(request, error=message, status=429)
        if result.token is None:
            return form(request, error="Wrong user name or password.", status=401)
        response = RedirectResponse(_safe_next(str(data.get("next", "/"))), 303)
        response.set_cookie(
            COOKIE,
            result.token,
            max_age=None,  # a session cookie: gone when the browser closes
            secure=True,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(_LOGIN_CSRF, secure=True, httponly=True, samesite="strict")
        return response

    @action("viewer")
    def logout(request: Request, _form: object) -> Response:
        web.catalog.end_session(user(request).token_hash)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, secure=True, httponly=True, samesite="strict")
        return response

    return [
        Route("/login", show, methods=["GET"]),
        Route("/login", submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
