"""The fleet page (each unit, updated in place every few seconds) and arming a cart."""

from __future__ import annotations

import re

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from protocol.topics import ID_PATTERN

from ..catalog import StudyError
from .context import Web, action, page
from .fleet_view import fleet_rows

__all__ = ["routes"]


def routes(web: Web) -> list[Route]:
    def rows() -> dict[str, object]:
        units = web.catalog.units()
        latest = {u.device_id: web.catalog.latest_clip(u.device_id) for u in units}
        verdicts = web.catalog.last_verdicts(c.clip_id for c in latest.values() if c)
        by_unit = {d: verdicts[c.clip_id] for d, c in latest.items() if c and c.clip_id in verdicts}
        table = fleet_rows(units, web.registry(), by_unit, now=web.clock())
        return {"rows": table, "online": sum(r.online for r in table)}

    @page("viewer")
    def fleet(request: Request) -> Response:
        return web.render(request, "fleet.html", rows())

    @page("viewer")
    def fleet_table(request: Request) -> Response:
        return web.render(request, "_fleet_table.html", rows())

    def arm_context(message: str | None = None, error: str | None = None) -> dict[str, object]:
        people = [p for p in web.catalog.participants() if p.consented]
        units = web.catalog.units()
        arms = web.catalog.latest_arms()
        # Taken: the unit's own "armed"/"disarmed" event, received after the request was made.
        taken = {}
        for device, asked in arms.items():
            for event in web.catalog.events(device_id=device, limit=20):
                if event.kind in ("armed", "disarmed") and event.received_at >= asked.requested_at:
                    taken[device] = event
                    break
        return {
            "units": units,
            "people": people,
            "arms": arms,
            "taken": taken,
            "states": {u.device_id: u for u in units},
            "message": message,
            "error": error,
        }

    @page("viewer")
    def arm_page(request: Request) -> Response:
        # After a request the browser is sent here (POST, redirect, GET: a reload asks nothing
        # twice); the query names what was asked.
        asked, device = request.query_params.get("asked"), request.query_params.get("unit", "")
        message = None
        if asked in ("arm", "disarm") and re.fullmatch(ID_PATTERN, device):
            message = f"{asked.capitalize()} of {device} requested: waiting for the unit."
        return web.render(request, "arm.html", arm_context(message))

    @page("viewer")
    def arm_status(request: Request) -> Response:
        return web.render(request, "_arm_status.html", arm_context())

    @action("researcher")
    def arm(request: Request, form: FormData) -> Response:
        device = str(form.get("device", ""))
        try:
            if form.get("disarm"):
                web.as_user(request).request_disarm(device)
                asked = "disarm"
            else:
                # One choice, "PAIN-0001:1": a participant with one of their open visits.
                pseudonym, _, visit = str(form.get("target", "")).partition(":")
                if not visit.isdigit():
                    raise StudyError("choose a participant and their open visit")
                hours = float(str(form.get("hours") or 8))
                web.as_user(request).request_arm(device, pseudonym, int(visit), hours=hours)
                asked = "arm"
        except (StudyError, ValueError) as exc:
            return web.render(request, "arm.html", arm_context(error=str(exc)), 400)
        return RedirectResponse(f"/arm?asked={asked}&unit={device}", 303)

    return [
        Route("/", fleet, methods=["GET"]),
        Route("/fleet/table", fleet_table, methods=["GET"]),
        Route("/arm", arm_page, methods=["GET"]),
        Route("/arm", arm, methods=["POST"]),
        Route("/arm/status", arm_status, methods=["GET"]),
    ]
