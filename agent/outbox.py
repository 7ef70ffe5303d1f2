"""A durable outbox: events for the forwarding URL (n8n) wait on disk until it acknowledges them.

    outbox = Outbox(Path("/var/lib/voicestack/outbox"))
    outbox.enqueue({"event": "recording_finished", "id": "RF-…", ...})   # any process
    await Sender(outbox, ForwardConfig.from_env()).run(session)        # one process

One file per event (`<enqueue time ns>-<id>.json`), written to a temporary name, fsynced and
renamed, so an event is either wholly queued or not at all. Any number of processes enqueue;
one sender (holding an flock on `.lock`) delivers them oldest first, one at a time, and
deletes a file only after a 2xx answer. Failures are retried with exponential backoff and
jitter, for as long as it takes. The queue is bounded (OUTBOX_MAX_EVENTS, OUTBOX_MAX_BYTES):
when full, the oldest event is dropped with a log line naming it.

Each delivery is signed so the receiver can check it came from us and is fresh:
    X-Voicestack-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(FORWARD_SECRET, "<t>." + body)>
    X-Voicestack-Event-Id: <event id>     (retries repeat it: de-duplicate on it)
    X-Voicestack-Event: <event type>
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from aiohttp import ClientError, ClientSession, ClientTimeout

from agent.durable import replace_file

log = logging.getLogger("agent.outbox")

DEFAULT_DIR = "/var/lib/voicestack/outbox"
SIGNATURE_HEADER = "X-Voicestack-Signature"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class OutboxError(Exception):
    pass


@dataclass(frozen=True)
class OutboxLimits:
    max_events: int = 10_000
    max_bytes: int = 256 * 1024 * 1024


class Outbox:
    """The queue directory. `enqueue` is safe from any process; it blocks for one fsync."""

    def __init__(self, path: Path, limits: OutboxLimits = OutboxLimits()) -> None:
        self.path = path
        self.limits = limits

    def ensure(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise OutboxError(f"failed to create the outbox {self.path}: {exc} — check OUTBOX_DIR "
                              "and that the service may write there") from exc

    def enqueue(self, event: Mapping[str, Any]) -> Path:
        """Queue `event` durably; returns its file. Raises OutboxError if it cannot be stored."""
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) > self.limits.max_bytes:
            raise OutboxError(f"event {event.get('id')} is {len(body)} bytes, more than the whole "
                              f"outbox may hold ({self.limits.max_bytes}); raise OUTBOX_MAX_BYTES")
        self.ensure()
        name = f"{time.time_ns():020d}-{_SAFE.sub('_', str(event.get('id') or 'event'))[:80]}.json"
        tmp = self.path / f".tmp-{os.getpid()}-{name}"
        final = self.path / name
        try:
            # 0o666 less the umask, as open() makes it (the directory itself is 0700).
            replace_file(final, body, mode=0o666, tmp=tmp)
        except OSError as exc:
            raise OutboxError(f"failed to queue event {event.get('id')} in {self.path}: {exc}") from exc
        self._trim(keep=final)
        return final

    def pending(self) -> list[Path]:
        """Queued event files, oldest first."""
        try:
            names = [n for n in os.listdir(self.path) if n.endswith(".json") and not n.startswith(".")]
        except FileNotFoundError:
            return []
        return [self.path / n for n in sorted(names)]

    def _trim(self, keep: Path) -> None:
        files = self.pending()
        sizes = {}
        for f in files:
            try:
                sizes[f] = f.stat().st_size
            except FileNotFoundError:
                pass  # delivered meanwhile
        files = [f for f in files if f in sizes]
        total = sum(sizes.values())
        while files and (len(files) > self.limits.max_events or total > self.limits.max_bytes):
            oldest = files.pop(0)
            if oldest == keep:
                break
            try:
                event = json.loads(oldest.read_bytes())
                what = f"{event.get('event')} {event.get('id')}"
            except (OSError, ValueError):
                what = oldest.name
            try:
                oldest.unlink()
            except FileNotFoundError:
                continue
            total -= sizes[oldest]
            log.warning("outbox %s is full (%d events / %d bytes max): dropped the oldest event, %s, "
                        "queued at %s", self.path, self.limits.max_events, self.limits.max_bytes,
                        what, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                            time.gmtime(int(oldest.name.split("-", 1)[0]) / 1e9)))


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Voicestack-Signature value for `body`."""
    t = int(time.time() if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str | None, *, tolerance: float = 300,
                     now: float | None = None) -> bool:
    """The receiver's check (what an n8n Code node does): right key, right body, fresh."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class ForwardConfig:
    """FORWARD_URL and how to deliver there (read once: ForwardConfig.from_env)."""

    url: str
    secret: str = field(repr=False)
    outbox_dir: Path = Path(DEFAULT_DIR)
    limits: OutboxLimits = OutboxLimits()
    timeout_s: float = 10.0
    min_backoff_s: float = 1.0
    max_backoff_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ForwardConfig | None":
        """None when FORWARD_URL is unset (nothing is forwarded); errors name the variable."""
        e = dict(os.environ if env is None else env)
        url = e.get("FORWARD_URL", "").strip()
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise OutboxError(f"FORWARD_URL is {url!r}; it must be an http(s):// URL (an n8n webhook)")
        secret = e.get("FORWARD_SECRET", "")
        if len(secret) < 32:
            raise OutboxError(
                f"FORWARD_SECRET is {len(secret)} characters; forwarded events are signed with it and "
                'it needs at least 32 — generate one with "openssl rand -hex 32" and give n8n the same')
        try:
            return cls(
                url=url, secret=secret,
                outbox_dir=Path(e.get("OUTBOX_DIR", "").strip() or DEFAULT_DIR),
                limits=OutboxLimits(int(e.get("OUTBOX_MAX_EVENTS") or OutboxLimits.max_events),
                                    int(e.get("OUTBOX_MAX_BYTES") or OutboxLimits.max_bytes)),
                timeout_s=float(e.get("FORWARD_TIMEOUT") or 10.0),
                min_backoff_s=float(e.get("FORWARD_MIN_BACKOFF") or 1.0),
                max_backoff_s=float(e.get("FORWARD_MAX_BACKOFF") or 300.0),
            )
        except ValueError as exc:
            raise OutboxError(f"OUTBOX_MAX_EVENTS, OUTBOX_MAX_BYTES, FORWARD_TIMEOUT and FORWARD_*_BACKOFF "
                              f"must be numbers: {exc}") from exc

    def outbox(self) -> Outbox:
        return Outbox(self.outbox_dir, self.limits)


class Sender:
    """Delivers the outbox to the forwarding URL; one per outbox directory (flock)."""

    def __init__(self, outbox: Outbox, config: ForwardConfig, poll_s: float = 1.0) -> None:
        self.outbox = outbox
        self.config = config
        self.poll_s = poll_s
        self.wake = asyncio.Event()  # set by in-process producers: deliver now, do not wait a poll
        self.delivered = 0
        self._lock_fd: int | None = None

    def _try_lock(self) -> bool:
        self.outbox.ensure()
        fd = os.open(self.outbox.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    async def run(self, session: ClientSession) -> None:
        """Deliver until cancelled."""
        warned = False
        while not self._try_lock():
            if not warned:
                log.warning("outbox %s is being delivered by another process; waiting for its lock",
                            self.outbox.path)
                warned = True
            await asyncio.sleep(5)
        log.info("delivering outbox %s to %s (%d waiting)", self.outbox.path, self.config.url,
                 len(self.outbox.pending()))
        try:
            attempt = 0
            while True:
                pending = self.outbox.pending()
                if not pending:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), self.poll_s)
                    except asyncio.TimeoutError:
                        pass
                    continue
                head = pending[0]
                try:
                    body = head.read_bytes()
                except FileNotFoundError:
                    continue  # dropped by a full queue meanwhile
                error = await self._post(session, body)
                if error is None:
                    head.unlink(missing_ok=True)
                    self.delivered += 1
                    if attempt:
                        log.info("outbox: %s delivered after %d failed attempt(s)", head.name, attempt)
                    attempt = 0
                    continue
                attempt += 1
                delay = min(self.config.max_backoff_s, self.config.min_backoff_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.8, 1.2)  # many nodes must not retry in lockstep
                log.warning("outbox: failed to deliver %s to %s (attempt %d): %s; %d waiting, next try "
                            "in %.1f s", head.name, self.config.url, attempt, error, len(pending), delay)
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def _post(self, session: ClientSession, body: bytes) -> str | None:
        """None on a 2xx answer, otherwise what went wrong."""
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.config.secret, body),
            "X-Voicestack-Event-Id": str(event.get("id", "")),
            "X-Voicestack-Event": str(event.get("event", "")),
        }
        try:
            async with session.post(self.config.url, data=body, headers=headers,
                                         timeout=ClientTimeout(total=self.config.timeout_s)) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status} {(await resp.text())[:200]!r}"
        except (ClientError, asyncio.TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
