"""LiveKit webhooks: verify, de-duplicate and normalize; a small receiver service and a CLI.

    python -m agent.webhooks                                  # env: WEBHOOK_HOST (127.0.0.1), WEBHOOK_PORT (8091)
    python -m agent.webhooks verify --body FILE --auth HEADER # n8n "Execute Command": JSON on stdout

livekit-server POSTs a protojson `WebhookEvent` with `Authorization: <JWT>` (no "Bearer"),
signed with the webhook api_key/secret, valid 5 minutes, whose `sha256` claim is
base64(sha256(body)). Point livekit's `webhook.urls` at http://127.0.0.1:8091/webhook.

Env: LIVEKIT_API_KEY / LIVEKIT_API_SECRET (the webhook key pair), WEBHOOK_MAX_AGE (300 s),
FORWARD_URL (optional: each verified, normalized event goes there, e.g. an n8n webhook) with
FORWARD_SECRET (required with it: deliveries are signed) and OUTBOX_DIR: events are queued on
disk before LiveKit gets its 200 and delivered by the outbox (agent/outbox.py) until the URL
acknowledges them; the recordings service queues its `recording_finished` events there too.
RECORDING_POLICY / LIVEKIT_URL: on `room_started` the receiver dispatches the recorder agent to
rooms the policy records (agent/recording_config.py).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Callable

import jwt
from aiohttp import ClientSession, web
from google.protobuf.json_format import ParseError
from livekit import api

from agent.outbox import ForwardConfig, Outbox, OutboxError, Sender
from agent.recording_config import RecordingConfig, RecordingConfigError, room_requests_recording

log = logging.getLogger("agent.webhooks")

DEFAULT_MAX_AGE = 300      # LiveKit's own webhook token lifetime
CLOCK_SKEW = 10            # seconds of clock difference tolerated between livekit-server and us
MAX_BODY = 1 << 20         # events are a few KB; egress_ended with many segments stays well under
MAX_SEEN = 50_000          # replay memory cap (ids only), a few MB at most

KNOWN_EVENTS = frozenset({
    "room_started", "room_finished", "participant_joined", "participant_left",
    "track_published", "track_unpublished", "egress_started", "egress_updated", "egress_ended",
})


class WebhookError(Exception):
    """A rejected delivery; `status` is the HTTP status the receiver answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReplayCache:
    """Event ids seen within the max-age window.

    An id only needs remembering while its event is young enough to pass the age check; after
    that the age check rejects it anyway, so expired ids are pruned. The hard cap is a last
    resort against a flood of valid events and drops the oldest id first.
    """

    def __init__(self, window: float, *, max_entries: int = MAX_SEEN) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> time it may be forgotten

    def seen(self, event_id: str, now: float) -> bool:
        """True if `event_id` was already recorded; otherwise record it."""
        while self._seen:
            oldest_id, forget_at = next(iter(self._seen.items()))
            if forget_at > now:
                break
            del self._seen[oldest_id]
        if event_id in self._seen:
            return True
        self._seen[event_id] = now + self.window
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return False

    def forget(self, event_id: str) -> None:
        """Accept `event_id` again (its delivery could not be handled; LiveKit will retry)."""
        self._seen.pop(event_id, None)

    def __len__(self) -> int:
        return len(self._seen)


class WebhookVerifier:
    """Checks signature, body hash, freshness and uniqueness of one delivery."""

    def __init__(self, api_key: str, api_secret: str, *, max_age: float = DEFAULT_MAX_AGE,
                 clock: Callable[[], float] = time.time, replay: ReplayCache | None = None) -> None:
        if not api_key or not api_secret:
            raise ValueError("webhook verification needs LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
        # The library's default leeway is 60 s; a replay window that long is needless here.
        self._receiver = api.WebhookReceiver(api.TokenVerifier(
            api_key, api_secret, leeway=datetime.timedelta(seconds=CLOCK_SKEW)))
        self.max_age = max_age
        self.clock = clock
        # An id may be forgotten once its created_at is older than max_age (+ skew).
        self.replay = replay if replay is not None else ReplayCache(max_age + CLOCK_SKEW)

    def verify(self, body: bytes | str, authorization: str | None) -> dict[str, Any]:
        """Return the normalized event, or raise WebhookError."""
        return normalize(self.verify_event(body, authorization))

    def verify_event(self, body: bytes | str, authorization: str | None) -> Any:
        """Return the verified protobuf WebhookEvent, or raise WebhookError."""
        if not authorization:
            raise WebhookError(401, "missing Authorization header (LiveKit sends the signed JWT there)")
        auth = authorization.strip()
        if auth.lower().startswith("bearer "):  # LiveKit sends none; tolerate proxies/n8n adding one
            auth = auth[7:].strip()
        try:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
        except UnicodeDecodeError as exc:
            raise WebhookError(400, f"body is not UTF-8: {exc}") from exc
        try:
            event = self._receiver.receive(text, auth)
        except jwt.ExpiredSignatureError as exc:
            raise WebhookError(401, "stale webhook: its token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise WebhookError(401, f"invalid webhook signature: {exc}") from exc
        except ParseError as exc:
            raise WebhookError(400, f"body is not a LiveKit WebhookEvent: {exc}") from exc
        except Exception as exc:  # the library raises bare Exception("hash mismatch"/"sha256 was not found")
            raise WebhookError(401, f"body does not match its signature: {exc}") from exc
        now = self.clock()
        if not event.id or not event.created_at:
            raise WebhookError(400, "event has no id/createdAt; cannot check age or replay")
        age = now - event.created_at
        if age > self.max_age:
            raise WebhookError(401, f"stale webhook: event {event.id} is {int(age)} s old (limit {int(self.max_age)} s)")
        if age < -CLOCK_SKEW:
            raise WebhookError(401, f"event {event.id} is dated {int(-age)} s in the future; check the clocks")
        # Recorded only now, after the signature checked out: forged deliveries cannot burn ids.
        if self.replay.seen(event.id, now):
            raise WebhookError(409, f"replayed webhook: event {event.id} was already delivered")
        return event


def _enum(wrapper: Any, value: int) -> str:
    # A newer livekit-server may send enum values this protocol version does not know.
    try:
        return str(wrapper.Name(value)).lower()
    except ValueError:
        return str(value)


def normalize(event: Any) -> dict[str, Any]:
    """A small, stable dict of what downstream automations need from a WebhookEvent."""
    out: dict[str, Any] = {
        "event": event.event, "id": event.id, "created_at": int(event.created_at),
        "known": event.event in KNOWN_EVENTS,
        "room": event.room.name or event.egress_info.room_name or None,
        "room_sid": event.room.sid or event.egress_info.room_id or None,
        "participant": None, "track": None, "egress": None,
    }
    if event.HasField("participant"):
        p = event.participant
        out["participant"] = {"identity": p.identity, "sid": p.sid, "name": p.name,
                              "kind": _enum(api.ParticipantInfo.Kind, p.kind)}
    if event.HasField("track"):
        t = event.track
        out["track"] = {"sid": t.sid, "name": t.name, "type": _enum(api.TrackType, t.type),
                        "source": _enum(api.TrackSource, t.source)}
    if event.HasField("egress_info"):
        e = event.egress_info
        out["egress"] = {
            "id": e.egress_id, "status": _enum(api.EgressStatus, e.status), "error": e.error or None,
            "files": [f.location or f.filename for f in e.file_results],
            "segments": [s.playlist_location or s.playlist_name for s in e.segment_results],
        }
    if event.event == "room_finished" and event.room_end_reason:
        out["room_end_reason"] = int(event.room_end_reason)
    return out


def log_line(ev: dict[str, Any]) -> str:
    parts = [f"webhook {ev['event']}", f"room={ev['room']}"]
    if ev["participant"]:
        parts.append(f"participant={ev['participant']['identity']}")
    if ev["track"]:
        parts.append(f"track={ev['track']['sid']}({ev['track']['type']})")
    if ev["egress"]:
        parts.append(f"egress={ev['egress']['id']} status={ev['egress']['status']} files={len(ev['egress']['files'])}")
    parts.append(f"id={ev['id']}")
    return " ".join(parts)


# ---- the receiver service --------------------------------------------------------------------

VERIFIER_KEY = web.AppKey("verifier", WebhookVerifier)
OUTBOX_KEY = web.AppKey("outbox", Outbox)
FORWARD_KEY = web.AppKey("forward", ForwardConfig)
SENDER_KEY = web.AppKey("sender", Sender)
RECORDING_KEY = web.AppKey("recording", RecordingConfig)
TASKS_KEY = web.AppKey("tasks", set)


async def dispatch_recorder(cfg: RecordingConfig, room: str, *, attempts: int = 3) -> bool:
    """Send the recorder agent into `room` unless a recorder dispatch is already there.

    A token's roomConfig may have dispatched it when the room was created; a second dispatch
    would start a second recorder under the same identity.
    """
    reason = "policy rooms" if cfg.policy == "rooms" else "room asked (voicestack.record)"
    for attempt in range(1, attempts + 1):
        try:
            async with api.LiveKitAPI() as lk:
                existing = await lk.agent_dispatch.list_dispatch(room_name=room)
                if any(d.agent_name == cfg.recorder_agent_name for d in existing):
                    log.info("recorder already dispatched to room %s", room)
                    return True
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                    agent_name=cfg.recorder_agent_name, room=room,
                    metadata=json.dumps({"reason": reason})))
            log.info("recorder dispatched to room %s (%s)", room, reason)
            return True
        except Exception as exc:  # noqa: BLE001 - TwirpError, connection errors: retried, then logged
            log.warning("failed to dispatch the recorder %r to room %s (attempt %d/%d): %s",
                        cfg.recorder_agent_name, room, attempt, attempts, exc)
            await asyncio.sleep(attempt)
    log.error("room %s is NOT recorded: the recorder could not be dispatched; check that "
              "voicestack-recorder runs and LIVEKIT_URL reaches livekit-server", room)
    return False


def _background(app: web.Application, coro: Any) -> None:
    task = asyncio.create_task(coro)
    app[TASKS_KEY].add(task)
    task.add_done_callback(app[TASKS_KEY].discard)


async def receive(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.json_response({"error": f"body exceeds {MAX_BODY} bytes"}, status=413)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": f"body exceeds {MAX_BODY} bytes"}, status=413)
    try:
        event = request.app[VERIFIER_KEY].verify_event(body, request.headers.get("Authorization"))
    except WebhookError as exc:
        log.warning("webhook rejected from %s: %s", request.remote, exc)
        return web.json_response({"error": str(exc)}, status=exc.status)
    ev = normalize(event)
    log.info("%s", log_line(ev))
    outbox = request.app.get(OUTBOX_KEY)
    if outbox is not None:
        # On disk before LiveKit hears 200: if this fails, LiveKit's own retry gets another go.
        try:
            await asyncio.to_thread(outbox.enqueue, ev)
        except OutboxError as exc:
            log.error("%s", exc)
            request.app[VERIFIER_KEY].replay.forget(event.id)  # LiveKit's retry must not be a "replay"
            return web.json_response({"error": f"could not queue the event for forwarding: {exc}"},
                                     status=503)
        request.app[SENDER_KEY].wake.set()
    rec = request.app.get(RECORDING_KEY)
    if rec is not None and event.event == "room_started":
        if rec.recorder_wanted(event.room.metadata):
            _background(request.app, dispatch_recorder(rec, event.room.name))
        elif room_requests_recording(event.room.metadata):
            log.warning("room %s asks for a recording (voicestack.record) but RECORDING_POLICY=off: "
                        "not recorded", event.room.name)
    return web.json_response(ev)


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _sender_ctx(app: web.Application) -> Any:
    async with ClientSession() as session:
        task = asyncio.create_task(app[SENDER_KEY].run(session))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _tasks_ctx(app: web.Application) -> Any:
    yield
    if app[TASKS_KEY]:
        await asyncio.gather(*app[TASKS_KEY], return_exceptions=True)


def create_app(verifier: WebhookVerifier, *, forward: ForwardConfig | None = None,
               recording: RecordingConfig | None = None) -> web.Application:
    """The receiver; `forward` queues and delivers events, `recording` dispatches the recorder."""
    app = web.Application(client_max_size=MAX_BODY)
    app[VERIFIER_KEY] = verifier
    app[TASKS_KEY] = set()
    app.cleanup_ctx.append(_tasks_ctx)
    if forward is not None:
        outbox = forward.outbox()
        outbox.ensure()
        app[FORWARD_KEY] = forward
        app[OUTBOX_KEY] = outbox
        app[SENDER_KEY] = Sender(outbox, forward)
        app.cleanup_ctx.append(_sender_ctx)
    if recording is not None:
        app[RECORDING_KEY] = recording
    app.router.add_post("/webhook", receive)
    app.router.add_get("/health", health)
    return app


def _verifier_from_env() -> WebhookVerifier:
    return WebhookVerifier(os.environ.get("LIVEKIT_API_KEY", ""), os.environ.get("LIVEKIT_API_SECRET", ""),
                           max_age=float(os.environ.get("WEBHOOK_MAX_AGE", DEFAULT_MAX_AGE)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.webhooks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    v = sub.add_parser("verify", help="verify one delivery; print the normalized event as JSON")
    v.add_argument("--body", required=True, help="file holding the raw request body ('-' = stdin)")
    v.add_argument("--auth", required=True, help="the Authorization header value")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        verifier = _verifier_from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "verify":
        # One process per delivery: the replay check only covers this call; age and signature still hold.
        try:
            body = sys.stdin.buffer.read() if args.body == "-" else open(args.body, "rb").read()
        except OSError as exc:
            print(f"error: failed to read webhook body {args.body}: {exc}", file=sys.stderr)
            return 2
        try:
            ev = verifier.verify(body, args.auth)
        except WebhookError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(ev))
        return 0
    try:
        forward = ForwardConfig.from_env()
        recording = RecordingConfig.from_env()
        app = create_app(verifier, forward=forward, recording=recording)
    except (OutboxError, RecordingConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = os.environ.get("WEBHOOK_HOST", "127.0.0.1")
    port = int(os.environ.get("WEBHOOK_PORT", "8091"))
    web.run_app(app, host=host, port=port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
