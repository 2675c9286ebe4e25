"""Participants and the dataset: counts per group, visits, recordings per participant, key
features pain vs control; starting an export and the earlier ones, superseded or not."""

from __future__ import annotations

from datetime import UTC

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..catalog import StudyError
from .context import Web, action, page, user
from .study_view import summarise

__all__ = ["routes"]


def routes(web: Web) -> list[Route]:
    def context(message: str | None = None, error: str | None = None) -> dict[str, object]:
        people = web.catalog.participants()
        recordings = {p.pseudonym: web.catalog.extracted_clips(p.pseudonym) for p in people}
        groups = {g: sum(1 for p in people if p.group == g and p.consented)
                  for g in ("pain", "control")}  # fmt: skip
        per_clip = []
        for person in people:
            for clip in recordings[person.pseudonym]:
                values: dict[str, object] = {}
                for record in web.catalog.features(clip.clip_id):
                    values.update(record.values or {})
                per_clip.append((person.group, values))
        return {
            "people": people,
            "recordings": recordings,
            "groups": groups,
            "summary": summarise(per_clip),
            "exports": web.catalog.exports()[::-1],
            "can_export": web.config.exports.dir is not None,
            "message": message,
            "error": error,
        }

    @page("viewer")
    def dataset(request: Request) -> Response:
        return web.render(request, "dataset.html", context())

    @action("researcher")
    def start_export(request: Request, form: FormData) -> Response:
        from ..research.export import export_dataset  # pyarrow and the folds: only when used

        folder = web.config.exports.dir
        if folder is None:
            return web.render(request, "dataset.html", context(error="exports are off"), 400)
        name = f"export-{web.clock().astimezone(UTC):%Y%m%dT%H%M%SZ}-{user(request).username}"
        try:
            result = export_dataset(
                web.as_user(request),
                web.config.features.dir,
                folder / name,
                actor=f"web:{user(request).username}",
            )
        except (StudyError, OSError) as exc:
            return web.render(request, "dataset.html", context(error=str(exc)), 400)
        message = (
            f"Export {result.record.id} written to {result.out}: "
            f"{result.participants} participant(s), {result.clips} clip(s)."
        )
        return web.render(request, "dataset.html", context(message=message))

    return [
        Route("/dataset", dataset, methods=["GET"]),
        Route("/dataset/export", start_export, methods=["POST"]),
    ]
