"""The audit log for admins: the newest rows, filtered by action, actor or clip, and whether the
whole hash chain verifies."""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .context import Web, page

__all__ = ["routes"]

WINDOW: Final = 5000  # the newest rows searched by a filter
SHOWN: Final = 200


def routes(web: Web) -> list[Route]:
    @page("admin")
    def audit(request: Request) -> Response:
        query = request.query_params
        wanted = {k: query.get(k, "").strip()[:64] for k in ("action", "actor", "clip")}
        log = web.catalog.audit
        head = log.head()
        window = log.entries(after_seq=max(0, head.seq - WINDOW), limit=WINDOW)
        rows = [
            r
            for r in reversed(window)
            if (not wanted["action"] or r.action == wanted["action"])
            and (not wanted["actor"] or wanted["actor"] in r.actor)
            and (not wanted["clip"] or wanted["clip"] in (r.clip_id or ""))
        ][:SHOWN]
        actions = sorted({r.action for r in window})
        context = {"rows": rows, "wanted": wanted, "report": log.verify(), "head": head,
                   "actions": actions}  # fmt: skip
        return web.render(request, "audit.html", context)

    return [Route("/audit", audit, methods=["GET"])]
