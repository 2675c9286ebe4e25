"""The dashboard's doors, against ``painav web run`` as provisioned (HTTPS with the site root's
certificate): every route needs a sign-in, every change a role and the form's CSRF token,
failed logins are throttled, and /metrics needs its bearer token."""

from __future__ import annotations

import http.client
import re
import time
import urllib.parse
from typing import Any

import pytest

from server.catalog import Catalog
from tests.support.dashboard import Dashboard, new_page, screenshot, sign_in


def _routes() -> list[tuple[str, str]]:
    """Every route of the app with a method, ids filled in."""
    import tempfile

    from starlette.routing import Route

    from protocol.web_config import WebConfig
    from server.web.app import PUBLIC, create_app
    from server.web.context import Web

    config = WebConfig.model_validate(
        {
            "site": {"site_id": "ward7", "registry": "/nonexistent"},
            "catalog": {"url": "sqlite://"},
            "http": {"cert": "/c", "key": "/k", "ca": "/a"},
            "features": {"dir": "/f"},
        }
    )
    folder = tempfile.mkdtemp(prefix="painav-routes-")
    app = create_app(Web(config, Catalog(f"sqlite:///{folder}/catalog.db")))
    found = []
    for route in app.routes:
        if isinstance(route, Route) and not route.path.startswith(PUBLIC):
            path = route.path.replace("{clip_id}", "cart-01-20261129T120000Z-ab12")
            found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


ROUTES = _routes()


def test_the_app_has_the_pages_the_issue_asks_for() -> None:
    paths = {path for _, path in ROUTES}
    assert {"/", "/arm", "/recordings", "/dataset", "/audit"} <= paths
    assert ("POST", "/arm") in ROUTES and ("POST", "/dataset/export") in ROUTES


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_an_anonymous_request_to_any_route_is_refused(
    board: Dashboard, method: str, path: str
) -> None:
    status, headers, _ = board.request(method, path, data=b"" if method == "POST" else None)
    if method == "GET":
        assert status == 303 and headers["location"].startswith("/login?next=")
    else:
        assert status == 401


def test_https_only_with_the_site_roots_certificate_and_strict_headers(board: Dashboard) -> None:
    status, headers, _ = board.get("login")
    assert status == 200
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["strict-transport-security"].startswith("max-age=")
    host, port = urllib.parse.urlsplit(board.url).netloc.split(":")
    plain = http.client.HTTPConnection(host, int(port), timeout=5)
    with pytest.raises(http.client.RemoteDisconnected):  # no plain HTTP beside it
        plain.request("GET", "/")
        plain.getresponse()


def _login_form(page: Any) -> None:
    page.wait_for_selector("input[name=password]")


def test_sign_in_cookie_and_sign_out(board: Dashboard, chromium: Any) -> None:
    page = new_page(chromium)
    page.goto(board.url + "recordings")
    _login_form(page)
    screenshot(page, "login")
    page.fill("input[name=username]", "viewer")
    page.fill("input[name=password]", "viewer-pass-01")
    page.click("button[type=submit]")
    page.wait_for_url(board.url + "recordings")  # back where they were sent from
    [cookie] = [c for c in page.context.cookies() if c["name"] == "__Host-painav"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["expires"] == -1  # a session cookie
    page.click("text=Sign out")
    _login_form(page)
    page.goto(board.url + "dataset")
    _login_form(page)  # the session is gone on the server, not only in the browser
    with Catalog(board.catalog_url) as catalog:
        actions = [e.action for e in catalog.audit.entries()]
    assert "web_login" in actions and "web_logout" in actions


def test_a_viewer_cannot_arm_nor_export(board: Dashboard, chromium: Any) -> None:
    page = new_page(chromium)
    sign_in(page, board, "viewer")
    page.goto(board.url + "arm")
    assert page.locator("form[action='/arm']").count() == 0
    assert "may look, not arm" in page.content()
    # Posted by hand, with the viewer's own valid CSRF token: the role still refuses it.
    token = page.locator("form[action='/logout'] input[name=csrf]").input_value()
    for path, form in (
        ("/arm", {"device": "cart-01", "target": "PAIN-0001:1"}),
        ("/dataset/export", {}),
        ("/recordings/cart-01-20261129T120000Z-ab12/assign", {"target": "PAIN-0001:1"}),
    ):
        reply = page.request.post(board.url + path.lstrip("/"), form={**form, "csrf": token})
        assert reply.status == 403 and "viewer" in reply.text(), path
    page.goto(board.url + "audit")
    assert "this needs admin" in page.content()


def test_a_form_without_its_csrf_token_is_refused(board: Dashboard, chromium: Any) -> None:
    page = new_page(chromium)
    sign_in(page, board, "researcher")
    page.goto(board.url + "dataset")
    # The researcher's own session, its cookie sent: only the token is missing or wrong.
    for token in (None, "forged-token"):
        form = {} if token is None else {"csrf": token}
        reply = page.request.post(board.url + "dataset/export", form=form)
        assert reply.status == 403 and "CSRF" in reply.text()
    page.eval_on_selector("form[action='/dataset/export'] input[name=csrf]", "e => e.remove()")
    page.click("text=Start an export")
    assert "CSRF token is missing" in page.content()
    with Catalog(board.catalog_url) as catalog:
        assert catalog.exports() == []


def test_ten_failed_logins_slow_the_next_ones(fresh_board: Dashboard, chromium: Any) -> None:
    board = fresh_board
    page = new_page(chromium)
    answers = []
    for _ in range(10):
        page.goto(board.url + "login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", "wrong password!")
        with page.expect_response(lambda r: r.url.endswith("/login")) as reply:
            page.click("button[type=submit]")
        answers.append(reply.value.status)
    screenshot(page, "login-throttled")
    assert answers[:5] == [401] * 5 and 429 in answers[5:]
    # The right password now waits too: nothing tells a guesser which guess was right.
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin-password-1")
    page.click("button[type=submit]")
    assert "Too many failed logins" in page.content()
    wait = int(re.search(r"try again in (\d+) s", page.content()).group(1))  # type: ignore[union-attr]
    assert 1 <= wait <= 300
    time.sleep(wait + 0.5)
    sign_in(page, board, "admin")  # after the wait, the right password works
    with Catalog(board.catalog_url) as catalog:
        failed = [e for e in catalog.audit.entries() if e.action == "web_login_failed"]
    assert len(failed) == sum(a == 401 for a in answers)


def test_metrics_need_the_bearer_token_and_health_says_ok(board: Dashboard) -> None:
    assert board.get("metrics")[0] == 401
    assert board.get("metrics", headers={"Authorization": "Bearer nope"})[0] == 401
    token = (board.folder / "metrics-token").read_text().strip()
    status, _, body = board.get("metrics", headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and b"painav_web_request_seconds" in body
    assert board.get("healthz")[:1] == (200,)
