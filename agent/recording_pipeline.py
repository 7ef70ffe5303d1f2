"""After a recording ends: transcript.json, summary.json, mix.ogg, then one recording_finished event.

Each step writes its file atomically and is skipped when the file is already there, so a
crash or restart resumes where it stopped and a finished recording is never redone. A step
that keeps failing (speech server or LLM down) is retried by the service with backoff; after
MAX_ATTEMPTS the step's file records the error instead and the event still goes out, with
the audio: a broken summariser never holds a recording back forever.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from agent.audio_files import duration_s, mixdown
from agent.outbox import Outbox
from agent.recording_config import RecordingConfig
from agent.recording_store import MIX, PROCESSING, SUMMARY, TRANSCRIPT, Recording, iso, read_json, write_json_atomic
from agent.summary import LlmClient, SummaryError, summarize
from agent.transcription import SttClient, merge, transcribe_track, transcript_text

log = logging.getLogger("agent.recording_pipeline")

MAX_ATTEMPTS = 5


@dataclass
class Backends:
    stt: SttClient
    llm: LlmClient
    outbox: Outbox | None  # None: FORWARD_URL unset, nothing is announced


def _state(rec: Recording) -> dict[str, Any]:
    try:
        return read_json(rec.path / PROCESSING)
    except (FileNotFoundError, ValueError):
        return {"attempts": 0, "next_attempt_at": 0, "event_id": None, "queued_at": None, "error": None}


def pending(rec: Recording, now: float | None = None) -> bool:
    """Finished recording whose event has not been produced yet, and due for an attempt."""
    if rec.manifest.get("status") not in ("complete", "partial"):
        return False
    state = _state(rec)
    return not state.get("done") and float(state.get("next_attempt_at") or 0) <= (now or time.time())


def _speaker_name(rec: Recording, identity: str | None) -> str:
    person = rec.manifest.get("participants", {}).get(identity or "", {})
    return str(person.get("name") or identity or "unknown")


async def _transcript(rec: Recording, cfg: RecordingConfig, b: Backends, give_up: bool) -> dict[str, Any]:
    path = rec.path / TRANSCRIPT
    if path.exists():
        return read_json(path)
    started = time.monotonic()
    segments: list[dict[str, Any]] = []
    files: dict[str, dict[str, Any]] = {}
    try:
        for track in rec.manifest.get("tracks", []):
            segs, dur = await transcribe_track(
                b.stt, rec.path / track["file"], channel=track.get("channel"),
                offset_s=float(track.get("offset_s") or 0), speaker=track.get("participant") or "unknown",
                name=_speaker_name(rec, track.get("participant")), file=track["file"])
            segments.extend(segs)
            files.setdefault(track["file"], {"duration_s": round(dur, 3)})
        merged = merge(segments)
        doc = {"recording_id": rec.id, "room": rec.manifest["room"], "model": b.stt.model,
               "language": b.stt.language, "segments": merged, "text": transcript_text(merged),
               "files": files, "error": None, "seconds_taken": round(time.monotonic() - started, 2)}
    except Exception as exc:  # TranscriptionError, or a file PyAV cannot read
        if not give_up:
            raise
        log.error("recording %s: giving up on the transcript after %d attempts: %s", rec.id, MAX_ATTEMPTS, exc)
        doc = {"recording_id": rec.id, "room": rec.manifest["room"], "model": b.stt.model,
               "segments": [], "text": "", "files": {}, "error": str(exc)}
    write_json_atomic(path, doc)
    log.info("recording %s: transcript with %d segment(s) in %.1f s", rec.id, len(doc["segments"]),
             time.monotonic() - started)
    return doc


async def _summary(rec: Recording, transcript: dict[str, Any], b: Backends, give_up: bool) -> dict[str, Any]:
    path = rec.path / SUMMARY
    if path.exists():
        return read_json(path)
    if transcript.get("error"):
        doc = {"text": None, "model": b.llm.model, "error": "no transcript to summarise"}
    else:
        try:
            doc = {**await summarize(b.llm, transcript["text"]), "error": None}
        except SummaryError as exc:
            if not give_up:
                raise
            log.error("recording %s: giving up on the summary after %d attempts: %s", rec.id, MAX_ATTEMPTS, exc)
            doc = {"text": None, "model": b.llm.model, "error": str(exc)}
    doc["recording_id"] = rec.id
    write_json_atomic(path, doc)
    return doc


def _files(rec: Recording, transcript: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per audio file: name, participant (channels of a call file), duration, size."""
    out: dict[str, dict[str, Any]] = {}
    for track in rec.manifest.get("tracks", []):
        name = track["file"]
        entry = out.get(name)
        if entry is None:
            path = rec.path / name
            dur = (transcript.get("files", {}).get(name, {}).get("duration_s")
                   or track.get("duration_s") or (duration_s(path) if path.exists() else 0.0))
            entry = out[name] = {"name": name, "participant": track.get("participant"),
                                 "offset_s": track.get("offset_s"), "duration_s": round(float(dur), 3),
                                 "size": path.stat().st_size if path.exists() else 0}
        if track.get("channel") is not None:
            entry.setdefault("channels", []).append(track.get("participant"))
    return list(out.values())


def _mix(rec: Recording) -> None:
    """mix.ogg: every track on one timeline, what GET /api/recordings/<id> serves for meetings."""
    names = {t["file"] for t in rec.manifest.get("tracks", [])}
    if len(names) <= 1 or (rec.path / MIX).exists():
        return  # one file (an agent call, a one-track meeting) is served as it is
    sources = [(rec.path / t["file"], float(t.get("offset_s") or 0), t.get("channel"))
               for t in rec.manifest["tracks"] if (rec.path / t["file"]).exists()]
    mixdown(sources, rec.path / MIX)


def build_event(rec: Recording, cfg: RecordingConfig, transcript: dict[str, Any],
                summary: dict[str, Any]) -> dict[str, Any]:
    m = rec.manifest
    base = f"{cfg.public_url}/api/recordings/{rec.id}" if cfg.public_url else f"/api/recordings/{rec.id}"
    ended = m.get("ended_at") or m.get("heartbeat_at")
    return {
        "event": "recording_finished", "id": f"RF-{rec.id}", "created_at": int(time.time()),
        "recording_id": rec.id, "room": m["room"], "room_sid": m.get("room_sid"), "kind": m["kind"],
        "status": m["status"], "partial_reason": m.get("partial_reason"),
        "started_at": iso(m["started_at"]), "ended_at": iso(ended),
        "duration_s": round(float(ended) - float(m["started_at"]), 3) if ended else None,
        "participants": [{"identity": p["identity"], "name": p.get("name"), "kind": p.get("kind")}
                         for p in m.get("participants", {}).values()],
        "files": _files(rec, transcript),
        "transcript": None if transcript.get("error") else {
            "text": transcript["text"], "segments": transcript["segments"], "model": transcript.get("model"),
            "language": transcript.get("language")},
        "transcript_error": transcript.get("error"),
        "summary": None if summary.get("error") else {"text": summary["text"], "model": summary.get("model")},
        "summary_error": summary.get("error"),
        "download_url": base, "transcript_url": f"{base}/transcript", "summary_url": f"{base}/summary",
    }


async def process(rec: Recording, cfg: RecordingConfig, b: Backends) -> dict[str, Any] | None:
    """Run the remaining steps for one finished recording; returns the event (queued or not).

    Raises TranscriptionError/SummaryError while the attempts last; the caller schedules the retry.
    """
    state = _state(rec)
    give_up = int(state.get("attempts") or 0) + 1 >= MAX_ATTEMPTS
    try:
        transcript = await _transcript(rec, cfg, b, give_up)
        summary = await _summary(rec, transcript, b, give_up)
        try:
            await asyncio.to_thread(_mix, rec)
        except Exception as exc:
            if not give_up:
                raise
            log.error("recording %s: no mix.ogg (the tracks stay downloadable one by one): %s", rec.id, exc)
        event = build_event(rec, cfg, transcript, summary)
        if b.outbox is not None:
            await asyncio.to_thread(b.outbox.enqueue, event)
            state["queued_at"] = time.time()
            log.info("recording %s: recording_finished queued for delivery (%d file(s), status %s)", rec.id,
                     len(event["files"]), event["status"])
        else:
            log.info("recording %s processed; FORWARD_URL is unset, so no recording_finished is sent", rec.id)
    except Exception as exc:
        state["attempts"] = int(state.get("attempts") or 0) + 1
        state["error"] = str(exc)
        state["next_attempt_at"] = time.time() + min(600, 15 * 2 ** state["attempts"])
        write_json_atomic(rec.path / PROCESSING, state)
        raise
    state.update(done=True, event_id=event["id"], error=None)
    write_json_atomic(rec.path / PROCESSING, state)
    return event
