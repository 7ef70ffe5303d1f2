"""Long, independent cache builds of `up` run in the background while the machines come up.

On a fresh machine the pinned livekit-server and Caddy builds (Go, CPU-bound), the wheelhouse
(pip downloads) and the Debian image (debootstrap, mostly I/O) do not depend on each other; run
one after the other they are most of a fresh `make up`. `Background.start()` launches the builds
at once; the step that needs a result waits for it (`result(name)`), so a failure is reported by
that step, with the build's own message. Each build holds its own cache lock
(infra.local.host.cache_lock), so two environments coming up at once still build once.

`run_logged` is the subprocess runner of those builds: it writes the command's output to a log
and says every HEARTBEAT_S what is still running and the log's last line, so no long step is
silent.
"""
from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

HEARTBEAT_S = 30.0


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 400))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:160] if lines else ""


def run_logged(cmd: Sequence[str], log: Path, what: str, say: Callable[[str], None],
               env: dict[str, str] | None = None, heartbeat_s: float = HEARTBEAT_S) -> int:
    """Run `cmd` with stdout+stderr into `log`; say "<what>: still running (N s) — <last log line>"
    every `heartbeat_s`. Returns the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            try:
                return proc.wait(timeout=heartbeat_s)
            except subprocess.TimeoutExpired:
                tail = _last_line(log)
                say(f"{what}: still running ({time.monotonic() - start:.0f} s)" + (f" — {tail}" if tail else ""))


class Background:
    """Named jobs started together, each waited for by the step that needs it."""

    def __init__(self, jobs: dict[str, Callable[[], Any]], say: Callable[[str], None]) -> None:
        self.jobs = jobs
        self.say = say
        self.futures: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> str:
        """Start every job not started yet; returns a line for the progress output."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.jobs)), thread_name_prefix="build")
            for name, fn in self.jobs.items():
                if name not in self.futures:
                    self.futures[name] = self._pool.submit(fn)
        return f"started {', '.join(self.jobs)} in the background"

    def result(self, name: str) -> Any:
        """The job's result (started now if it was not), or its exception raised here."""
        if name not in self.futures:
            self.start()
        return self.futures[name].result()

    def close(self) -> None:
        """Start nothing more. A build already running still finishes before the process exits
        (Python joins pool threads at exit); its result stays in the cache for the next run."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
