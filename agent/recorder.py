"""The meeting recorder: a hidden participant writing one Ogg/Opus file per audio track.

    python -m agent.recorder           # a livekit-agents worker registered as RECORDER_AGENT_NAME

It is dispatched explicitly (agent_name "recorder"): by the webhook receiver on room_started
when the policy records the room, or by a token whose roomConfig names it. It joins hidden,
subscribe-only, and per recording:
  1. refuses if the disk is below RECORDING_MIN_FREE_MB or RECORDING_POLICY is off;
  2. shows the recording (room metadata voicestack.recording = "true") before any audio is
     written, and does not record at all if that cannot be shown;
  3. writes NN-<identity>.ogg per published audio track, each with its start offset on the
     recording's timeline, and a manifest with a heartbeat every few seconds. A subscribed
     track delivers audio without gaps (libwebrtc conceals lost packets and plays silence
     while the publisher is muted or quiet; measured: 17.81 s received over 17.80 s wall
     time with pauses and mutes), so offset + position in the file is wall time. Arrival
     times are not used: after a CPU stall frames arrive in a burst, not late;
  4. ends when no human has been in the room for RECORDING_END_GRACE seconds, the room
     closes, or the disk guard trips (then status "partial", reason "disk_space").
The recordings service transcribes and delivers what it leaves behind.

Env: RECORDER_HEALTH_HOST/PORT (127.0.0.1:8093), RECORDER_MAX_JOBS (8), RECORDER_DRAIN_TIMEOUT
(60 s), RECORDER_NUM_IDLE_PROCESSES (1), plus LIVEKIT_URL /
LIVEKIT_API_KEY / LIVEKIT_API_SECRET and the RecordingConfig variables.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")

import numpy as np  # noqa: E402
from livekit import rtc  # noqa: E402
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobRequest, cli  # noqa: E402
from livekit.agents.worker import WorkerPermissions  # noqa: E402

from agent.audio_files import OggOpusWriter  # noqa: E402
from agent.recording_config import RecordingConfig  # noqa: E402
from agent.recording_indicator import set_indicator  # noqa: E402
from agent.recording_store import Recording, Store, free_bytes, safe_name  # noqa: E402

log = logging.getLogger("agent.recorder")

IDENTITY = "voicestack-recorder"   # one fixed identity: a second recorder replaces, never doubles
HEARTBEAT_S = 5.0
DISK_CHECK_S = 5.0
FSYNC_S = 10.0
AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
FINISHED = "recording finished"  # the shutdown reason of a recording that ended by itself


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "").strip() or default)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a whole number: {exc}") from exc


@dataclass
class _Track:
    entry: dict
    writer: OggOpusWriter
    started_wall: float
    task: asyncio.Task | None = field(default=None, repr=False)


class MeetingRecording:
    """One room's recording, driven by the room's events inside the recorder's job process."""

    def __init__(self, ctx: JobContext, cfg: RecordingConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.store = Store(cfg.root)
        self.rec: Recording | None = None
        self.tracks: dict[str, _Track] = {}   # track sid -> open writer
        self._claimed: set[str] = set()       # track sids with a reader (connect-time scan + event)
        self.done = asyncio.Event()
        self.status, self.reason = "complete", None
        self._human_seen_at: float | None = None
        self._file_index = 0
        self._finished = False
        self._finish_lock = asyncio.Lock()
        self.ended_by: str | None = None       # set when the recording ends by itself
        self._task: asyncio.Task | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> bool:
        """Check, show, connect and start writing; False if this room is not recorded.

        Returns once the recording runs: livekit-agents gives an entrypoint only 15 s after a
        shutdown request, so the recording itself lives in a task (`watch`).
        """
        room = self.ctx.job.room
        self.store.ensure()
        free = free_bytes(self.cfg.root)
        if free < self.cfg.min_free_bytes:
            log.error("room %s NOT recorded: %s has %d MB free, below RECORDING_MIN_FREE_MB=%d; "
                      "free disk space or lower the limit", room.name, self.cfg.root, free >> 20,
                      self.cfg.min_free_mb)
            return False
        # A dispatch can reach a second job under load (a slow accept is re-assigned); one
        # recording per room: the second one would also take over the first's identity.
        running = self.store.active_for(room.name, self.cfg.stale_after_s)
        if running is not None:
            log.warning("room %s is already being recorded (%s, pid %s); this recorder leaves",
                        room.name, running.id, running.manifest.get("pid"))
            return False
        # Shown before anything is written; no indicator, no recording.
        if not await self._indicator(True):
            log.error("room %s NOT recorded: the recording indicator could not be shown", room.name)
            return False
        self.rec = self.store.create(kind="meeting", room=room.name, room_sid=room.sid or None,
                                     extra={"job_id": self.ctx.job.id})
        r = self.ctx.room
        r.on("track_subscribed", self._on_track_subscribed)
        r.on("track_unsubscribed", self._on_track_unsubscribed)
        r.on("participant_connected", self._on_participant)
        r.on("participant_disconnected", self._on_participant_left)
        r.on("disconnected", lambda *_: self.done.set())
        self.ctx.add_shutdown_callback(self._on_shutdown)
        try:
            await self.ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        except Exception:
            await self._finish()
            raise
        for p in r.remote_participants.values():
            self._on_participant(p)
            for pub in p.track_publications.values():
                if pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO:
                    self._on_track_subscribed(pub.track, pub, p)
        self._task = asyncio.create_task(self.watch())
        return True

    async def watch(self) -> None:
        """Run until the recording ends by itself (or the room goes), then finish it."""
        try:
            await self._watch()
        finally:
            await self._finish()
        if self.ended_by is not None:
            self.ctx.shutdown(FINISHED)

    async def _watch(self) -> None:
        assert self.rec is not None
        last_beat = last_disk = last_sync = time.monotonic()
        while not self.done.is_set():
            try:
                await asyncio.wait_for(self.done.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            humans = [p for p in self.ctx.room.remote_participants.values() if p.kind != AGENT]
            if humans:
                self._human_seen_at = now
            elif self._human_seen_at is not None and now - self._human_seen_at >= self.cfg.end_grace_s:
                log.info("room %s: no participant left for %.0f s; recording %s ends", self.rec.manifest["room"],
                         self.cfg.end_grace_s, self.rec.id)
                self.ended_by = "everyone left"
                break
            if now - last_disk >= DISK_CHECK_S:
                last_disk = now
                free = free_bytes(self.cfg.root)
                if free < self.cfg.min_free_bytes:
                    log.error("recording %s stopped: %d MB free on %s, below RECORDING_MIN_FREE_MB=%d",
                              self.rec.id, free >> 20, self.cfg.root, self.cfg.min_free_mb)
                    self.status, self.reason = "partial", "disk_space"
                    self.ended_by = "disk guard"
                    break
            if now - last_sync >= FSYNC_S:
                last_sync = now
                for t in self.tracks.values():
                    await asyncio.to_thread(t.writer.sync)
            if now - last_beat >= HEARTBEAT_S:
                last_beat = now
                self.rec.heartbeat()

    async def _finish(self) -> None:
        """Close every file and the manifest; once, whoever calls first (the others wait)."""
        async with self._finish_lock:
            if self.rec is None or self._finished:
                return
            self._finished = True
            self.done.set()
            present = [p["identity"] for p in self.rec.manifest["participants"].values()
                       if p["kind"] != "agent" and p["left_s"] is None]
            if self.ended_by is None and present:
                # Ended from outside (service stop, room deleted) while people were still in it:
                # what was recorded is kept, and the recording says it is incomplete.
                self.status, self.reason = "partial", "recorder_shutdown"
                log.warning("recording %s cut short with %s still in room %s", self.rec.id,
                            ", ".join(present), self.rec.manifest["room"])
            for sid in list(self.tracks):
                await self._close_track(sid)
            if not self.rec.manifest["tracks"]:
                # Nobody published audio: there is nothing to keep, transcribe or announce.
                shutil.rmtree(self.rec.path, ignore_errors=True)
                log.info("recording %s discarded: no audio track was published in room %s", self.rec.id,
                         self.rec.manifest["room"])
            else:
                self.rec.finish(self.status, self.reason)
                log.info("recording %s finished: status=%s files=%d", self.rec.id, self.status,
                         len(self.rec.manifest["tracks"]))
            await self._indicator(False)

    async def _on_shutdown(self, reason: str) -> None:
        """The job ends (by the recording itself, a service stop after RECORDER_DRAIN_TIMEOUT,
        or the room closing): make sure the recording is finished before the process goes."""
        if reason != FINISHED:
            log.info("recorder job shutting down (%s)", reason)
        self.done.set()
        await self._finish()

    async def _indicator(self, on: bool) -> bool:
        for attempt in range(3):
            if await set_indicator(self.ctx.job.room.name, on):
                return True
            await asyncio.sleep(0.5 * (attempt + 1))
        return False

    # ---- participants and tracks -------------------------------------------------------------

    def _participant_entry(self, p: rtc.RemoteParticipant) -> dict:
        assert self.rec is not None
        people = self.rec.manifest["participants"]
        if p.identity not in people:
            people[p.identity] = {
                "identity": p.identity, "name": p.name or p.identity,
                "kind": "agent" if p.kind == AGENT else "standard",
                "joined_s": round(time.time() - self.rec.manifest["started_at"], 3), "left_s": None,
            }
        return people[p.identity]

    def _on_participant(self, p: rtc.RemoteParticipant) -> None:
        if self.rec is not None:
            self._participant_entry(p)["left_s"] = None
            self.rec.save()

    def _on_participant_left(self, p: rtc.RemoteParticipant) -> None:
        if self.rec is not None and p.identity in self.rec.manifest["participants"]:
            self.rec.manifest["participants"][p.identity]["left_s"] = round(
                time.time() - self.rec.manifest["started_at"], 3)
            self.rec.save()

    def _on_track_subscribed(self, track: rtc.Track, pub: rtc.RemoteTrackPublication,
                             p: rtc.RemoteParticipant) -> None:
        if self.rec is None or self.done.is_set() or track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        if pub.sid in self._claimed:
            return
        self._claimed.add(pub.sid)
        self._participant_entry(p)
        asyncio.ensure_future(self._record(track, pub, p))

    def _on_track_unsubscribed(self, _track: rtc.Track, pub: rtc.RemoteTrackPublication,
                               _p: rtc.RemoteParticipant) -> None:
        if pub.sid in self.tracks:
            asyncio.ensure_future(self._close_track(pub.sid))

    async def _record(self, track: rtc.Track, pub: rtc.RemoteTrackPublication,
                      p: rtc.RemoteParticipant) -> None:
        assert self.rec is not None
        rate = self.cfg.sample_rate
        stream = rtc.AudioStream.from_track(track=track, sample_rate=rate, num_channels=1)
        t: _Track | None = None
        try:
            async for event in stream:
                if self.done.is_set():
                    break
                frame = event.frame
                now = time.time()
                pcm = np.frombuffer(frame.data, dtype=np.int16)
                if t is None:
                    t = self._open_track(pub, p, now - pcm.size / rate)
                    if t is None:
                        return
                if pub.sid not in self.tracks:
                    break  # closed meanwhile (unsubscribed, or the recording ended)
                t.writer.write(pcm)
        except Exception:
            log.exception("recording %s: failed while writing track %s of %s", self.rec.id, pub.sid, p.identity)
        finally:
            await stream.aclose()
            if pub.sid in self.tracks:
                await self._close_track(pub.sid)
            self._claimed.discard(pub.sid)

    def _open_track(self, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant,
                    started_wall: float) -> _Track | None:
        assert self.rec is not None
        self._file_index += 1
        name = f"{self._file_index:02d}-{safe_name(p.identity)}.ogg"
        try:
            writer = OggOpusWriter(self.rec.path / name, self.cfg.sample_rate, self.cfg.bitrate)
        except OSError as exc:
            log.error("recording %s: failed to create %s: %s", self.rec.id, name, exc)
            return None
        entry = {
            "file": name, "participant": p.identity, "track_sid": pub.sid, "channel": None,
            "offset_s": round(max(0.0, started_wall - self.rec.manifest["started_at"]), 3),
            "ended_s": None, "sample_rate": self.cfg.sample_rate,
        }
        self.rec.manifest["tracks"].append(entry)
        self.rec.save()
        t = _Track(entry=entry, writer=writer, started_wall=started_wall)
        self.tracks[pub.sid] = t
        log.info("recording %s: track %s of %s -> %s at +%.2f s", self.rec.id, pub.sid, p.identity, name,
                 entry["offset_s"])
        return t

    async def _close_track(self, sid: str) -> None:
        t = self.tracks.pop(sid, None)
        if t is None or self.rec is None:
            return
        await asyncio.to_thread(t.writer.close)
        t.entry["ended_s"] = round(t.entry["offset_s"] + t.writer.duration_s, 3)
        t.entry["duration_s"] = round(t.writer.duration_s, 3)
        self.rec.save()


# ---- the worker ------------------------------------------------------------------------------

async def on_request(req: JobRequest) -> None:
    """Accept a recorder dispatch unless the operator switched recording off."""
    cfg = RecordingConfig.from_env()
    if not cfg.enabled:
        log.warning("recorder dispatched to room %s but RECORDING_POLICY=off: refused", req.room.name)
        await req.reject()
        return
    await req.accept(identity=IDENTITY, name="Recorder")


async def entrypoint(ctx: JobContext) -> None:
    cfg = RecordingConfig.from_env()
    session = MeetingRecording(ctx, cfg)
    if not await session.start():
        ctx.shutdown("not recorded")


def recorder_load(server: AgentServer) -> float:
    return min(1.0, len(server.active_jobs) / max(1, _env_int("RECORDER_MAX_JOBS", 8)))


def build_server() -> AgentServer:
    cfg = RecordingConfig.from_env()  # fail at start on a bad configuration, not at the first room
    server = AgentServer(
        host=os.environ.get("RECORDER_HEALTH_HOST", "127.0.0.1"),
        port=_env_int("RECORDER_HEALTH_PORT", 8093),
        num_idle_processes=_env_int("RECORDER_NUM_IDLE_PROCESSES", 1),
        # On SIGTERM running recordings get this long to end by themselves; then they are
        # closed as "partial" (reason recorder_shutdown), never lost.
        drain_timeout=_env_int("RECORDER_DRAIN_TIMEOUT", 60),
        load_fnc=recorder_load,
        load_threshold=1.0,
        # Hidden and subscribe-only: it never appears in participant lists and cannot speak.
        permissions=WorkerPermissions(can_publish=False, can_subscribe=True, can_publish_data=False,
                                      can_update_metadata=False, hidden=True),
    )
    server.rtc_session(entrypoint, agent_name=cfg.recorder_agent_name, on_request=on_request)
    return server


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv if argv is None else argv)
    if len(args) == 1:
        args.append("start")
    sys.argv = args
    try:
        server = build_server()
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    cli.run_app(server)


if __name__ == "__main__":
    main()
