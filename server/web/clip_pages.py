"""Recordings: newest first with their lifecycle state and quality verdict, assigning a clip to
a participant's visit, a clip's page with its plots, and (where an admin allows it) playback."""

from __future__ import annotations

import io

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..catalog import ClipNotFoundError, ClipStateError, StudyError
from ..catalog.records import ClipRecord
from .context import Web, action, page, user

__all__ = ["routes"]

LISTED = 200


def routes(web: Web) -> list[Route]:
    def table() -> dict[str, object]:
        clips = web.catalog.clips(newest_first=True, limit=LISTED)
        return {
            "clips": clips,
            "verdicts": web.catalog.last_verdicts(c.clip_id for c in clips),
            "people": [p for p in web.catalog.participants() if p.consented],
        }

    def listing(request: Request, *, error: str | None = None, status: int = 200) -> Response:
        return web.render(request, "recordings.html", {**table(), "error": error}, status)

    @page("viewer")
    def recordings(request: Request) -> Response:
        return listing(request)

    @page("viewer")
    def recordings_table(request: Request) -> Response:
        return web.render(request, "_recordings_table.html", table())

    @action("researcher")
    def assign(request: Request, form: FormData) -> Response:
        clip_id = request.path_params["clip_id"]
        pseudonym, _, visit = str(form.get("target", "")).partition(":")
        try:
            if not visit.isdigit():
                raise StudyError("choose a participant and their visit")
            web.as_user(request).assign_clip(clip_id, pseudonym, int(visit))
        except (StudyError, ClipNotFoundError, ClipStateError) as exc:
            return listing(request, error=str(exc), status=400)
        return RedirectResponse("/recordings", 303)  # a reload asks nothing twice

    def find(clip_id: str) -> ClipRecord | None:
        try:
            return web.catalog.clip(clip_id)
        except (ClipNotFoundError, ValueError):
            return None

    @page("viewer")
    def clip_page(request: Request) -> Response:
        from .plots import clip_plots  # matplotlib: imported by the first clip page, not at start

        clip = find(request.path_params["clip_id"])
        if clip is None:
            return PlainTextResponse("no such recording", 404)
        features = web.catalog.features(clip.clip_id)
        context = {
            "clip": clip,
            "qc": web.catalog.qc(clip.clip_id),
            "features": features,
            "plots": clip_plots(features, web.config.features.dir),
            "events": web.catalog.audit.entries(clip_id=clip.clip_id, limit=200),
            "can_play": user(request).role in web.config.video.roles,
        }
        return web.render(request, "clip.html", context)

    @page("viewer")
    def video(request: Request) -> Response:
        """The clip decrypted in memory and remuxed to MP4, never written to disk; audited."""
        from ..extract.media import decrypt_to_memory
        from ..extract.remux import remux
        from ..extract.worker import load_identities
        from ..stores import open_store

        settings = web.config.video
        who = user(request)
        if who.role not in settings.roles or settings.data_key is None or settings.store is None:
            return PlainTextResponse(
                "refused: playing recordings is not enabled for your role", 403
            )
        clip = find(request.path_params["clip_id"])
        if clip is None or clip.store_key is None:
            return PlainTextResponse("no such stored recording", 404)
        # Audited first: a decrypt that cannot be audited does not happen.
        web.catalog.audit_decrypt(clip.clip_id, worker=f"web:{who.username}", purpose="play")
        with open_store(settings.store).open(clip.store_key) as ciphertext:
            plaintext = decrypt_to_memory(ciphertext, load_identities(settings.data_key))
        out = io.BytesIO()
        remux(plaintext, out, format="mp4")
        del plaintext
        headers = {"Cache-Control": "no-store"}
        return Response(out.getvalue(), media_type="video/mp4", headers=headers)

    return [
        Route("/recordings", recordings, methods=["GET"]),
        Route("/recordings/table", recordings_table, methods=["GET"]),
        Route("/recordings/{clip_id}", clip_page, methods=["GET"]),
        Route("/recordings/{clip_id}/assign", assign, methods=["POST"]),
        Route("/recordings/{clip_id}/video", video, methods=["GET"]),
    ]
