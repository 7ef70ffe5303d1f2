"""Downloads: GET /api/recordings/<id>[/transcript|/summary|/manifest|/files/<name>] with the bearer key.

Caddy routes https://<livekit name>/api/recordings* to RECORDINGS_HOST:RECORDINGS_PORT
(127.0.0.1:8092). The key is TOKEN_KEY, the one /api/token takes (`Authorization: Bearer …`).

  /api/recordings/<id>             the audio: audio.ogg of an agent call, the one track of a
                                   one-person meeting, or mix.ogg (all tracks on one timeline)
  /api/recordings/<id>/transcript  transcript.json       /summary   summary.json
  /api/recordings/<id>/manifest    manifest.json (who, when, which files)
  /api/recordings/<id>/files/<n>   one track's Ogg/Opus file, by its name in the manifest

Ids and file names are matched against fixed patterns and the manifest before any path is
built, so nothing outside the recordings directory can be named. Files stream from disk
(Range requests work); nothing is read into memory.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import math
from typing import Awaitable, Callable

from aiohttp import web

from agent.recording_store import MANIFEST, MIX, SUMMARY, TRANSCRIPT, Store, StoreError
from agent.token_service import TokenBucket, client_address, with_json_errors

log = logging.getLogger("agent.recordings_api")

STORE_KEY = web.AppKey("store", Store)
KEY_KEY = web.AppKey("token_key", str)
BUCKET_KEY = web.AppKey("bucket", TokenBucket)
TRUSTED_PROXIES = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
NO_STORE = {"Cache-Control": "no-store"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={**NO_STORE, **(headers or {})})


@web.middleware
async def guard(request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Bearer key on everything but /health; wrong keys are rate limited per client."""
    if request.path != "/api/recordings/health":
        auth = request.headers.get("Authorization", "")
        scheme, _, presented = auth.partition(" ")
        key = request.app[KEY_KEY]
        if not key or scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), key.encode()):
            wait = request.app[BUCKET_KEY].take(client_address(request, TRUSTED_PROXIES))
            if wait > 0:
                return _error(429, "too many failed attempts; retry later",
                              {"Retry-After": str(max(1, math.ceil(wait)))})
            return _error(401, "missing or wrong Authorization: Bearer <TOKEN_KEY>",
                          {"WWW-Authenticate": "Bearer"})
    return await with_json_errors(request, handler, _error)


def _recording(request: web.Request):  # -> Recording
    try:
        return request.app[STORE_KEY].open(request.match_info["id"])
    except StoreError:
        # One answer for "malformed" and "absent": ids are not to be probed.
        raise web.HTTPNotFound(reason=f"no recording {request.match_info['id'][:100]!r}") from None


def _file(path, content_type: str, download_name: str | None = None) -> web.FileResponse:
    headers = {**NO_STORE, "Content-Type": content_type}
    if download_name:
        headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return web.FileResponse(path, headers=headers)


async def audio(request: web.Request) -> web.StreamResponse:
    rec = _recording(request)
    if rec.manifest.get("status") == "recording":
        return _error(409, f"recording {rec.id} is still running; fetch it after recording_finished",
                      {"Retry-After": "30"})
    names = list(dict.fromkeys(t["file"] for t in rec.manifest.get("tracks", [])))
    if len(names) == 1:
        path = rec.file(names[0])
    else:
        path = rec.path / MIX
        if not path.exists():
            return _error(409, f"recording {rec.id} is still being processed; retry after recording_finished",
                          {"Retry-After": "30"})
    return _file(path, "audio/ogg", f"{rec.id}.ogg")


def _json_file(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        rec = _recording(request)
        path = rec.path / name
        if not path.exists():
            return _error(409 if name != MANIFEST else 404,
                          f"{name} of recording {rec.id} is not written yet; retry after recording_finished",
                          {"Retry-After": "30"})
        return _file(path, "application/json")
    return handler


async def track_file(request: web.Request) -> web.StreamResponse:
    rec = _recording(request)
    name = request.match_info["name"]
    if name not in {t["file"] for t in rec.manifest.get("tracks", [])}:
        raise web.HTTPNotFound(reason=f"recording {rec.id} has no file {name[:100]!r}")
    return _file(rec.file(name), "audio/ogg", f"{rec.id}-{name}")


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(store: Store, token_key: str, *, bucket: TokenBucket | None = None) -> web.Application:
    app = web.Application(middlewares=[guard])
    app[STORE_KEY] = store
    app[KEY_KEY] = token_key
    # Failed attempts only: 20 at once, then 10 a minute per client.
    app[BUCKET_KEY] = bucket or TokenBucket(10, 20)
    app.router.add_get("/api/recordings/health", health)
    app.router.add_get("/api/recordings/{id}", audio)
    app.router.add_get("/api/recordings/{id}/transcript", _json_file(TRANSCRIPT))
    app.router.add_get("/api/recordings/{id}/summary", _json_file(SUMMARY))
    app.router.add_get("/api/recordings/{id}/manifest", _json_file(MANIFEST))
    app.router.add_get("/api/recordings/{id}/files/{name}", track_file)
    return app
