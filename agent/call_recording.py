"""In-process recording of a voice-agent call (RECORDING_POLICY=agent-calls), for agent/worker.py.

    record = await call_recording.record_options(ctx, session)   # before session.start(record=…)
    server.rtc_session(entrypoint, …, on_session_end=call_recording.on_session_end)

livekit-agents' own RecorderIO writes one stereo Ogg/Opus file (channel 0 the user, channel 1
the agent, on one timeline) into the job's session directory; pointed at the recording's
directory, it grows there during the call, so a killed job leaves what was said. Nothing is
uploaded: that only happens for *.livekit.cloud or LIVEKIT_OBSERVABILITY_URL, which is refused
here. The manifest's heartbeat marks a crash; at the session's end the manifest is completed
with the chat history beside it, and the recordings service takes it from there.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from livekit import rtc
from livekit.agents import AgentSession, JobContext

from agent.recording_config import RecordingConfig
from agent.recording_indicator import set_indicator
from agent.recording_store import CALL_AUDIO, Recording, Store, StoreError, free_bytes, write_json_atomic

log = logging.getLogger("agent.call_recording")

HEARTBEAT_S = 5.0
AUDIO_ONLY = {"audio": True, "traces": False, "logs": False, "transcript": False}


@dataclass
class _Call:
    rec: Recording
    session: AgentSession
    heartbeat: asyncio.Task | None = field(default=None, repr=False)


_CALLS: dict[str, _Call] = {}  # job id -> call; one job per process, but keyed to be sure


def _uploads_somewhere(livekit_url: str) -> str | None:
    """Where livekit-agents would upload a recording, if anywhere (see job._observability_url)."""
    explicit = os.environ.get("LIVEKIT_OBSERVABILITY_URL", "").strip()
    if explicit:
        return explicit
    host = urlsplit(livekit_url).hostname or ""
    return livekit_url if host.endswith(".livekit.cloud") else None


async def record_options(ctx: JobContext, session: AgentSession) -> dict[str, bool] | bool:
    """What to pass as session.start(record=…): False, or audio-only recording into a new
    recording directory (decided by RECORDING_POLICY and the room's metadata).

    Never raises: whatever goes wrong here, the call goes ahead unrecorded (and says so).
    """
    try:
        return await _record_options(ctx, session)
    except Exception:  # noqa: BLE001 - whatever fails, the call must go ahead (unrecorded, and logged)
        log.exception("call in room %s NOT recorded: preparing the recording failed", ctx.job.room.name)
        call = _CALLS.pop(ctx.job.id, None)
        if call is not None and call.heartbeat is not None:
            call.heartbeat.cancel()
        return False


async def _record_options(ctx: JobContext, session: AgentSession) -> dict[str, bool] | bool:
    try:
        cfg = RecordingConfig.from_env()
    except ValueError as exc:
        log.error("call in room %s NOT recorded: %s", ctx.job.room.name, exc)
        return False
    room = ctx.job.room
    if not cfg.agent_records_call(room.metadata):
        return False
    upload = _uploads_somewhere(os.environ.get("LIVEKIT_URL", ""))
    if upload:
        log.error("call in room %s NOT recorded: livekit-agents would upload it to %s; unset "
                  "LIVEKIT_OBSERVABILITY_URL to record on this node only", room.name, upload)
        return False
    try:
        Store(cfg.root).ensure()
        free = free_bytes(cfg.root)
    except (StoreError, OSError) as exc:
        log.error("call in room %s NOT recorded: %s", room.name, exc)
        return False
    if free < cfg.min_free_bytes:
        log.error("call in room %s NOT recorded: %s has %d MB free, below RECORDING_MIN_FREE_MB=%d",
                  room.name, cfg.root, free >> 20, cfg.min_free_mb)
        return False
    if not await set_indicator(room.name, True):
        log.error("call in room %s NOT recorded: the recording indicator could not be shown", room.name)
        return False
    rec = Store(cfg.root).create(kind="agent_call", room=room.name, room_sid=room.sid or None,
                                 extra={"job_id": ctx.job.id})
    try:
        # RecorderIO writes <session_directory>/audio.ogg; the job's default is a temporary
        # directory deleted at job end. Private attribute, so on_session_end also moves the
        # file if a future livekit-agents ignores this.
        ctx._session_directory = rec.path  # type: ignore[attr-defined]
        call = _Call(rec=rec, session=session)
        _refresh(call, ctx)
        rec.save()
    except Exception:
        shutil.rmtree(rec.path, ignore_errors=True)  # no audio yet: nothing is lost
        await set_indicator(room.name, False)
        raise
    call.heartbeat = asyncio.create_task(_beat(call, ctx))
    _CALLS[ctx.job.id] = call
    # The session closes (and RecorderIO has written its last page) when the caller hangs up;
    # the job itself only ends when the room closes, up to departure_timeout later.
    session.on("close", lambda _ev: _finishing(ctx))
    return dict(AUDIO_ONLY)


def _user(call: _Call, ctx: JobContext) -> rtc.RemoteParticipant | None:
    try:
        linked = call.session.room_io.linked_participant  # the user the session listens to
    except RuntimeError:  # not started with a room yet
        linked = None
    if linked is not None:
        return linked
    humans = [p for p in ctx.room.remote_participants.values()
              if p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT]
    return humans[0] if humans else None


def _refresh(call: _Call, ctx: JobContext, offset_s: float = 0.0) -> None:
    """Participants and the two channels as far as they are known now (also for a crash)."""
    m = call.rec.manifest
    now = time.time() - m["started_at"]
    for p in ctx.room.remote_participants.values():
        if p.identity not in m["participants"] and p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            m["participants"][p.identity] = {"identity": p.identity, "name": p.name or p.identity,
                                             "kind": "standard", "joined_s": round(now, 3), "left_s": None}
    me = ctx.room.local_participant if ctx.room.isconnected() else None
    agent_id = me.identity if me is not None else f"agent-{ctx.job.id}"
    if agent_id not in m["participants"]:
        m["participants"][agent_id] = {"identity": agent_id, "name": (me.name if me else "") or "agent",
                                       "kind": "agent", "joined_s": round(now, 3), "left_s": None}
    user = _user(call, ctx)
    known = m["tracks"][0]["participant"] if m.get("tracks") else None  # the room may be gone at the end
    m["tracks"] = [
        {"file": CALL_AUDIO, "participant": user.identity if user else known, "channel": 0,
         "offset_s": round(offset_s, 3), "ended_s": None, "sample_rate": 48000},
        {"file": CALL_AUDIO, "participant": agent_id, "channel": 1,
         "offset_s": round(offset_s, 3), "ended_s": None, "sample_rate": 48000},
    ]


async def _beat(call: _Call, ctx: JobContext) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        try:
            _refresh(call, ctx)
            call.rec.heartbeat()
        except Exception:
            log.exception("recording %s: failed to write its heartbeat", call.rec.id)


_FINISHING: dict[str, asyncio.Task] = {}


def _finishing(ctx: JobContext) -> asyncio.Task:
    """The one task completing this job's recording (started by whichever comes first)."""
    task = _FINISHING.get(ctx.job.id)
    if task is None:
        task = _FINISHING[ctx.job.id] = asyncio.ensure_future(_finish_logged(ctx))
    return task


async def _finish_logged(ctx: JobContext) -> None:
    try:
        await _finish(ctx)
    except Exception:
        # The manifest still says "recording": the recordings service will mark it partial.
        log.exception("failed to complete the recording of the call in room %s", ctx.job.room.name)


async def on_session_end(ctx: JobContext) -> None:
    """Complete the call's manifest (AgentServer.rtc_session(on_session_end=…)); normally the
    session's close event has already done it, this waits for that."""
    if ctx.job.id in _CALLS or ctx.job.id in _FINISHING:
        await _finishing(ctx)
    _FINISHING.pop(ctx.job.id, None)


async def _finish(ctx: JobContext) -> None:
    call = _CALLS.pop(ctx.job.id, None)
    if call is None:
        return
    if call.heartbeat is not None:
        call.heartbeat.cancel()
    rec, m = call.rec, call.rec.manifest
    ended = time.time()
    try:
        report = ctx.make_session_report(call.session)
    except RuntimeError as exc:
        log.warning("recording %s: no session report (%s); keeping the audio as recorded", rec.id, exc)
        report = None
    offset = 0.0
    if report is not None:
        src = Path(report.audio_recording_path) if report.audio_recording_path else None
        if src is not None and src.is_file() and src.parent.resolve() != rec.path.resolve():
            shutil.move(str(src), rec.path / CALL_AUDIO)
        if report.audio_recording_started_at:
            offset = max(0.0, report.audio_recording_started_at - m["started_at"])
        history: dict[str, Any] = report.chat_history.to_dict(exclude_timestamp=False)
        write_json_atomic(rec.path / "chat.json", history)
    _refresh(call, ctx, offset)
    audio = rec.path / CALL_AUDIO
    if not audio.is_file():
        log.error("recording %s: the agent session wrote no audio; nothing to keep", rec.id)
        shutil.rmtree(rec.path, ignore_errors=True)
    else:
        for track in m["tracks"]:
            track["ended_s"] = round(ended - m["started_at"], 3)
        for person in m["participants"].values():
            if person["left_s"] is None:
                person["left_s"] = round(ended - m["started_at"], 3)
        rec.finish("complete", ended_at=ended)
        log.info("recording %s finished: agent call in room %s, %d bytes", rec.id, m["room"],
                 audio.stat().st_size)
    await set_indicator(ctx.job.room.name, False)
