"""The recordings directory: one directory per recording, its manifest, and the rules around it.

    <RECORDINGS_DIR>/<recording id>/
        manifest.json     who, when, which files; status recording | complete | partial
        NN-<identity>.ogg one Ogg/Opus file per audio track (meetings), or audio.ogg (agent calls)
        transcript.json   summary.json   mix.ogg   processing.json   (written afterwards)

Every JSON file is replaced atomically (write a temporary file, fsync, rename), so a crash
leaves either the old or the new version, never half of one. The manifest says "recording"
from the first byte of audio and carries a heartbeat: a recording whose heartbeat stopped is
marked "partial" (reason "recorder_stopped") by the recordings service, never silently lost.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from agent.durable import replace_file

log = logging.getLogger("agent.recording_store")

MANIFEST = "manifest.json"
TRANSCRIPT = "transcript.json"
SUMMARY = "summary.json"
PROCESSING = "processing.json"
MIX = "mix.ogg"
CALL_AUDIO = "audio.ogg"  # livekit-agents' RecorderIO writes this name
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MANIFEST_VERSION = 1
HUNG_FACTOR = 10  # a live writer silent this many times RECORDING_STALE_AFTER is taken as hung
# Recordings are personal data: readable by the service user (and its group) only.
FILE_MODE = 0o640
DIR_MODE = 0o750


class StoreError(Exception):
    pass


def new_recording_id(now: float | None = None) -> str:
    """rec-<UTC time>-<8 hex>: sortable by start, unguessable enough not to collide."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"rec-{stamp}-{secrets.token_hex(4)}"


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds (what n8n and mail templates show)."""
    if ts is None:
        return None
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def safe_name(text: str, limit: int = 48) -> str:
    """A participant identity reduced to file-name characters (the manifest keeps the real one)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "participant"
    return cleaned[:limit]


def write_json_atomic(path: Path, data: Any) -> None:
    replace_file(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode(), mode=FILE_MODE)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as src:
        return json.load(src)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    return shutil.disk_usage(path).free


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None.

    With the pid it names one process for good: a pid reused after a crash has another start.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def writer_alive(manifest: dict[str, Any]) -> bool:
    """Is the process that writes this recording still running (on this host)?"""
    pid = manifest.get("pid")
    if not pid or manifest.get("host") != socket.gethostname():
        return False
    started = process_start(int(pid))
    return started is not None and started == manifest.get("pid_start", started)


@dataclass
class Recording:
    """One recording directory; `manifest` is the in-memory copy its writer keeps saving."""

    path: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return self.path.name

    def save(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def heartbeat(self, now: float | None = None) -> None:
        self.manifest["heartbeat_at"] = now if now is not None else time.time()
        self.save()

    def file(self, name: str) -> Path:
        """A file of this recording by name; only plain names inside the directory."""
        if not FILE_RE.match(name):
            raise StoreError(f"file name {name!r} is not a recording file name")
        return self.path / name

    def finish(self, status: str, reason: str | None = None, ended_at: float | None = None) -> None:
        self.manifest["status"] = status
        self.manifest["partial_reason"] = reason
        self.manifest["ended_at"] = ended_at if ended_at is not None else time.time()
        self.save()


class Store:
    """The recordings directory (RECORDINGS_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        except OSError as exc:
            raise StoreError(f"failed to create the recordings directory {self.root}: {exc} — "
                             "check RECORDINGS_DIR and that the service may write there") from exc

    def create(self, *, kind: str, room: str, room_sid: str | None, started_at: float | None = None,
               extra: dict[str, Any] | None = None) -> Recording:
        """A new recording directory with its manifest in state "recording"."""
        self.ensure()
        started = started_at if started_at is not None else time.time()
        rid = new_recording_id(started)
        path = self.root / rid
        path.mkdir(mode=DIR_MODE)
        rec = Recording(path, {
            "version": MANIFEST_VERSION, "id": rid, "kind": kind, "room": room, "room_sid": room_sid,
            "status": "recording", "partial_reason": None,
            "started_at": started, "ended_at": None, "heartbeat_at": started,
            "pid": os.getpid(), "pid_start": process_start(os.getpid()), "host": socket.gethostname(),
            "participants": {}, "tracks": [], **(extra or {}),
        })
        rec.save()
        log.info("recording %s started: room=%s kind=%s dir=%s", rid, room, kind, path)
        return rec

    def active_for(self, room: str, stale_after_s: float) -> Recording | None:
        """A live recording of `room` on this node, if there is one (its writer runs and beats)."""
        now = time.time()
        for rec in self.all():
            m = rec.manifest
            if (m.get("room") == room and m.get("status") == "recording" and writer_alive(m)
                    and now - float(m.get("heartbeat_at") or 0) < HUNG_FACTOR * stale_after_s):
                return rec
        return None

    def path_of(self, recording_id: str) -> Path:
        """The directory of `recording_id`; raises StoreError for anything that is not an id."""
        if not ID_RE.match(recording_id):
            raise StoreError(f"{recording_id!r} is not a recording id")
        path = self.root / recording_id
        # ID_RE admits no "/" or "..", so this only guards against a symlink planted inside.
        if path.is_symlink() or path.resolve().parent != self.root.resolve():
            raise StoreError(f"{recording_id!r} is not a recording directory")
        return path

    def open(self, recording_id: str) -> Recording:
        path = self.path_of(recording_id)
        try:
            return Recording(path, read_json(path / MANIFEST))
        except FileNotFoundError as exc:
            raise StoreError(f"no recording {recording_id!r}") from exc
        except ValueError as exc:
            raise StoreError(f"recording {recording_id!r} has an unreadable manifest: {exc}") from exc

    def all(self) -> Iterator[Recording]:
        """Every readable recording, oldest first (ids sort by start time)."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.is_symlink() or not ID_RE.match(path.name):
                continue
            try:
                yield Recording(path, read_json(path / MANIFEST))
            except FileNotFoundError:
                continue  # being created right now
            except ValueError as exc:
                log.warning("recording %s has an unreadable manifest, skipped: %s", path.name, exc)

    # ---- crash detection and retention ------------------------------------------------------

    def mark_stale(self, rec: Recording, stale_after_s: float, now: float | None = None) -> bool:
        """Mark a "recording" whose writer is gone as partial; True if it was marked.

        Gone = no heartbeat for `stale_after_s` and its process (pid and start time) is not
        running. A writer that still runs is only given up after HUNG_FACTOR times as long
        without a heartbeat: a busy machine delays heartbeats, and marking a live recording
        would announce it twice. ended_at is the last sign of life: the newest of the
        heartbeat and the audio files' modification times.
        """
        m = rec.manifest
        if m.get("status") != "recording":
            return False
        now = now if now is not None else time.time()
        quiet = now - float(m.get("heartbeat_at") or m.get("started_at") or 0)
        if quiet < stale_after_s or (writer_alive(m) and quiet < HUNG_FACTOR * stale_after_s):
            return False
        last = float(m.get("heartbeat_at") or m.get("started_at") or now)
        for track in m.get("tracks", []):
            try:
                last = max(last, (rec.path / track["file"]).stat().st_mtime)
            except (OSError, KeyError):
                pass
        for track in m.get("tracks", []):
            if track.get("ended_s") is None:
                track["ended_s"] = round(last - float(m["started_at"]), 3)
        rec.finish("partial", "recorder_stopped", ended_at=last)
        log.warning("recording %s: its recorder (pid %s) stopped %d s ago without finishing; "
                    "marked partial, keeping the %d file(s) recorded so far",
                    rec.id, m.get("pid"), int(quiet), len({t['file'] for t in m.get('tracks', [])}))
        return True

    def sweep_retention(self, retention_days: float, now: float | None = None) -> list[str]:
        """Delete finished recordings older than the retention period; the ids deleted."""
        if retention_days <= 0:
            return []
        now = now if now is not None else time.time()
        cutoff = now - retention_days * 86400
        removed = []
        for rec in list(self.all()):
            m = rec.manifest
            if m.get("status") == "recording":
                continue
            ended = float(m.get("ended_at") or m.get("started_at") or now)
            if ended < cutoff:
                shutil.rmtree(rec.path, ignore_errors=True)
                removed.append(rec.id)
                log.info("recording %s deleted: ended %s, older than the %g-day retention",
                         rec.id, iso(ended), retention_days)
        return removed
