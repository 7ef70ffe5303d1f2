"""A client that keeps opening new spoken calls through an environment's LiveKit name while
something else happens (a rolling deploy): tests/e2e/cluster/test_rolling.py and
bench/bench_cluster_loss.py --rolling count what failed."""
from __future__ import annotations

import threading
import time

from infra import outputs
from infra.probes.roundtrip import round_trips
from tests.e2e import network

#: The second caller starts this many seconds after the first: with two, a new call every few
#: seconds (a call with the agent's greeting and answer takes about 14 s).
STAGGER_S = 6


class Caller(threading.Thread):
    """One call after another until `stop` is set; `calls` holds (seconds from its start, ok, error)."""

    def __init__(self, out: outputs.Outputs, start_after: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.out, self.start_after, self.stop = out, start_after, stop
        self.calls: list[tuple[float, bool, str | None]] = []

    def run(self) -> None:
        if self.stop.wait(self.start_after):
            return
        t0 = time.monotonic()
        while not self.stop.is_set():
            try:
                (result,) = round_trips(self.out, 1, timeout=60)
                ok, error = bool(result["ok"]), result.get("error")
            except AssertionError as exc:  # the client itself crashed: a failed call too
                ok, error = False, str(exc)[-500:]
            self.calls.append((round(time.monotonic() - t0, 1), ok, error))


def start_callers(out: outputs.Outputs, stop: threading.Event, count: int = 2) -> list[Caller]:
    callers = [Caller(out, i * STAGGER_S, stop) for i in range(count)]
    for caller in callers:
        caller.start()
    return callers


def stop_callers(callers: list[Caller], stop: threading.Event) -> list[tuple[float, bool, str | None]]:
    """Stops them (each finishes its call) and returns every call, in time order."""
    stop.set()
    for caller in callers:
        caller.join(timeout=180)
    return sorted(c for caller in callers for c in caller.calls)


def livekit_pids(env: str, nodes: list[str]) -> dict[str, str]:
    return {n: network.ssh(env, n, "systemctl show -p MainPID --value livekit").strip() for n in nodes}


def drift_livekit_config(env: str, nodes: list[str]) -> None:
    """A change on each node that the deploy repairs with a LiveKit restart (as an upgrade does)."""
    for node in nodes:
        network.ssh(env, node, "echo '# drift (a test or benchmark of the rolling deploy)' >> /etc/livekit/livekit.yaml")
