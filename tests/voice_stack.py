"""The voice stack's processes on loopback, for the tests that start them: standard library only.

    procs = Processes(logdir)
    procs.livekit(port, key, secret)                           # a real livekit-server, as "livekit"
    procs.speech(speech_port)                                  # agent.speech_server, as "speech"
    procs.module("worker", "agent.worker", env)                # python -m agent.worker
    procs.wait_http("livekit", f"http://127.0.0.1:{port}/", 30, "livekit-server")
    procs.wait_registered("worker", 90)
    ...
    procs.stop()                                               # every process, last started first

A module fixture: `with log_dir("X_LOGDIR", "x-") as logdir, running(stack, stack.start): yield stack`.

Used by tests/browser/loopback.py (operator venv: the services run in AGENT_PY),
tests/unit/test_agent_roundtrip.py and tests/unit/test_agent_recording.py (agent venv).
Every process logs to <logdir>/<name>.log and is stopped by its own PID (or, with
own_group, its own process group).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from tests.conftest import ROOT, free_port, http_ok, livekit_binary, wait_until

#: The agent venv's interpreter, for a test in the operator venv that starts agent services.
AGENT_PY = str(ROOT / ".venv-agent" / "bin" / "python")
REGISTERED = "registered worker"  # what livekit-agents logs once livekit-server accepted a worker


def livekit_config(port: int, api_key: str, api_secret: str, *, udp_port: int | None = None,
                   rtc_extra: str = "", extra: str = "") -> str:
    """A livekit-server config body for 127.0.0.1 only: no STUN lookup, one TCP and one UDP media port.

    rtc_extra: more keys of the rtc map (", ips: {...}"); extra: more top-level YAML lines.
    """
    udp = udp_port if udp_port is not None else free_port(socket.SOCK_DGRAM)
    return (f"port: {port}\nbind_addresses: [127.0.0.1]\n"
            f"rtc: {{tcp_port: {free_port()}, udp_port: {udp}, node_ip: 127.0.0.1, use_external_ip: false"
            f"{rtc_extra}}}\n"
            f"keys: {{{api_key}: {api_secret}}}\nlogging: {{level: info}}\n{extra}")


class Processes:
    """Named processes with a log file each; `python` runs the agent modules."""

    def __init__(self, logdir: Path, *, python: str = sys.executable, env: dict[str, str] | None = None,
                 own_group: bool = False, stop_timeout: float = 20) -> None:
        self.logdir = logdir
        self.python = python
        self.env = env or {}           # added to every process's environment
        self.own_group = own_group     # a session of its own: stop() kills what the process left behind
        self.stop_timeout = stop_timeout
        self.procs: dict[str, subprocess.Popen] = {}
        self._log_start: dict[str, int] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        path = self.logdir / f"{name}.log"
        # Appended, so a restarted service keeps its earlier lines; log() reads this run's only.
        self._log_start[name] = path.stat().st_size if path.exists() else 0
        self._logs[name] = log = open(path, "ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=self.own_group)
        self.procs[name] = proc
        return proc

    def module(self, name: str, module: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`python -m module` of the agent venv, as `name`."""
        return self.spawn(name, [self.python, "-m", module], env)

    def livekit(self, port: int, api_key: str, api_secret: str, *, udp_port: int | None = None,
                rtc_extra: str = "", extra: str = "") -> subprocess.Popen:
        """livekit-server on 127.0.0.1:port, as "livekit" (the keywords: see livekit_config)."""
        body = livekit_config(port, api_key, api_secret, udp_port=udp_port, rtc_extra=rtc_extra, extra=extra)
        # The config body carries the API secret: pass it through the environment, not argv.
        return self.spawn("livekit", [livekit_binary()], {"LIVEKIT_CONFIG": body})

    def speech(self, port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
        """The speech server (faster-whisper + piper) on 127.0.0.1:port, as "speech"; /v1 its OpenAI-style API."""
        return self.module("speech", "agent.speech_server", {"SPEECH_PORT": str(port), **(env or {})})

    def log(self, name: str) -> str:
        """What the current process of `name` logged so far."""
        with open(self.logdir / f"{name}.log", "rb") as log:
            log.seek(self._log_start.get(name, 0))
            return log.read().decode(errors="replace")

    def wait_http(self, name: str, url: str, timeout: float, what: str) -> None:
        """Until `url` answers 200; fails at once, with the log's end, when process `name` exits."""
        self._wait(name, lambda: http_ok(url), timeout, what)

    def wait_registered(self, name: str, timeout: float, what: str | None = None) -> None:
        """Until the agent worker `name` has registered with livekit-server."""
        self._wait(name, lambda: REGISTERED in self.log(name), timeout,
                   what or f"the {name} worker to register with livekit-server")

    def _wait(self, name: str, check: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            wait_until(check, timeout, what, self.procs[name])
        except (TimeoutError, RuntimeError) as exc:
            raise type(exc)(f"{exc}; the end of {name}.log:\n{self.log(name)[-3000:]}") from None

    def stop(self, *names: str) -> None:
        """SIGTERM to `names` (default: all, last started first), then wait; SIGKILL at the timeout.

        With own_group, like systemd's KillMode=mixed: SIGTERM to the main process, then SIGKILL
        to the rest of its group.
        """
        chosen = [n for n in (names or reversed(list(self.procs))) if n in self.procs]
        procs = [self.procs.pop(n) for n in chosen]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in zip(chosen, procs):
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                if not self.own_group:
                    proc.kill()
            if self.own_group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self._logs.pop(name).close()

    def dump_logs(self, tail: int = 4000) -> None:
        """Every log's end on stderr, for a fixture whose start failed."""
        for log in sorted(self.logdir.glob("*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}\n")


@contextlib.contextmanager
def log_dir(keep_var: str, prefix: str) -> Iterator[Path]:
    """A temporary directory for the logs, or the one $keep_var names (kept for a post-mortem)."""
    keep = os.environ.get(keep_var)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(keep or tmp)
        path.mkdir(parents=True, exist_ok=True)
        yield path


@contextlib.contextmanager
def running(procs: Processes, start: Callable[[], object]) -> Iterator[None]:
    """start(), then the body; every log's end on stderr if start() fails; every process stopped after."""
    try:
        try:
            start()
        except Exception:
            procs.dump_logs()
            raise
        yield
    finally:
        procs.stop()
