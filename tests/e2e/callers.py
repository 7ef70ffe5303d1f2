"""Clients for a cluster while something else happens (a rolling deploy): callers that keep opening
new spoken calls through the LiveKit name (tests/e2e/cluster/test_rolling.py and
bench/bench_cluster_loss.py --rolling count what failed), and a long call held on one node."""
from __future__ import annotations

import queue
import re
import secrets
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Iterator, NamedTuple

from infra import outputs
from infra.local import balancer, host
from infra.local.names import EnvNames
from infra.probes.roundtrip import CallSession, round_trips
from infra.spec import drain_flag_command
from tests.e2e import network

#: The agent's answer to "turn on the lights" as the client's speech model transcribes it: tiny.en
#: once heard "Okay, I turned on the light." in a call whose audio was whole (answered in 2.1 s).
LIGHTS_ANSWER = re.compile(r"\bturned on the lights?\b")


def answered_lights(answer: dict) -> bool:
    """Whether a round trip's result holds the agent's spoken answer to the lights phrase."""
    return bool(answer.get("ok")) and LIGHTS_ANSWER.search(answer.get("answer", "").lower()) is not None


#: The second caller starts this many seconds after the first: with two, a new call every few
#: seconds (a call with the agent's greeting and answer takes about 14 s).
STAGGER_S = 6


class Call(NamedTuple):
    at_s: float          # seconds from the callers' epoch to the call's start
    ok: bool
    error: str | None
    room: str            # its room's name: where the room and its agent job were (placement())


class Caller(threading.Thread):
    """One call after another until `stop` is set; `calls` holds each one's Call."""

    def __init__(self, out: outputs.Outputs, start_after: float, stop: threading.Event, epoch: float) -> None:
        super().__init__(daemon=True)
        self.out, self.start_after, self.stop, self.epoch = out, start_after, stop, epoch
        self.calls: list[Call] = []

    def run(self) -> None:
        if self.stop.wait(self.start_after):
            return
        while not self.stop.is_set():
            room, started = f"caller-{secrets.token_hex(4)}", time.monotonic()
            try:
                (result,) = round_trips(self.out, 1, timeout=60, rooms=[room])
                ok, error = bool(result["ok"]), result.get("error")
            except AssertionError as exc:  # the client itself crashed: a failed call too
                ok, error = False, str(exc)[-500:]
            self.calls.append(Call(round(started - self.epoch, 1), ok, error, room))


def start_callers(out: outputs.Outputs, stop: threading.Event, count: int = 2,
                  epoch: float | None = None) -> list[Caller]:
    """`count` callers, staggered; their calls' times count from `epoch` (a time.monotonic(),
    e.g. a rolling deploy's start; default now)."""
    epoch = time.monotonic() if epoch is None else epoch
    callers = [Caller(out, i * STAGGER_S, stop, epoch) for i in range(count)]
    for caller in callers:
        caller.start()
    return callers


def stop_callers(callers: list[Caller], stop: threading.Event) -> list[Call]:
    """Stops them (each finishes its call) and returns every call, in time order."""
    stop.set()
    for caller in callers:
        caller.join(timeout=180)
    return sorted(c for caller in callers for c in caller.calls)


def placement(env: str, nodes: list[str], room: str) -> str:
    """Where a call's room and agent job were, from the nodes' journals (LiveKit's room_started
    webhook at the room's node, the worker's job line at the agent's): what a failed call's report needs."""
    hosted = [n for n in nodes if room in network.rooms_started(env, n)]
    agents = agent_nodes(env, nodes, room)
    return f"room {room} on {', '.join(hosted) or 'no node'}, agent job on {', '.join(agents) or 'no node'}"


def livekit_pids(env: str, nodes: list[str]) -> dict[str, str]:
    return {n: network.ssh(env, n, "systemctl show -p MainPID --value livekit").strip() for n in nodes}


def drift_livekit_config(env: str, nodes: list[str]) -> None:
    """A change on each node that the deploy repairs with a LiveKit restart (as an upgrade does)."""
    for node in nodes:
        network.ssh(env, node, "echo '# drift (a test or benchmark of the rolling deploy)' >> /etc/livekit/livekit.yaml")


#: Tries to get a long call's agent job onto a chosen node's worker: LiveKit gives a job to
#: any node's worker (about one chance in three per try on three nodes; 20 tries miss 0.03%).
COLOCATE_TRIES = 20


def agent_nodes(env: str, nodes: list[str], room: str) -> list[str]:
    """The nodes whose agent worker logged a job for `room` (agent/worker.py logs each job's room)."""
    return [n for n in nodes if network.ssh(
        env, n, f"journalctl -u voicestack-agent --no-pager -o cat --since -1h | grep -qF 'for room {room}' "
                "&& echo found || true").strip() == "found"]


def agent_node(env: str, nodes: list[str], room: str, deadline_s: float = 30) -> str:
    """The node whose agent worker runs the job of `room` (agent/worker.py logs each job's room)."""
    found: list[str] = []

    def probe() -> bool:
        found[:] = agent_nodes(env, nodes, room)
        return bool(found)

    host.wait_until(f"the agent job of room {room} in a node's journal", probe, deadline_s, interval=1.0)
    return found[0]


#: Seconds the balancer may take to change its view of a node.
BALANCER_S = 60


@contextmanager
def only_through(env: str, out: outputs.Outputs, node: str) -> Iterator[None]:
    """While inside, the balancer sends new connections to `node` only (the others' drain flags on);
    a client that connects meanwhile keeps its signalling there."""
    names, others = EnvNames(env), [n for n in out.spec.balancer.targets if n != node]
    for other in others:
        network.ssh(env, other, drain_flag_command(on=True))
    try:
        for other in others:
            balancer.wait_for(names, other, up=False, deadline_s=BALANCER_S)
        yield
    finally:
        for other in others:
            network.ssh(env, other, drain_flag_command(on=False))
        for other in others:
            balancer.wait_for(names, other, up=True, deadline_s=BALANCER_S)


def placed_call(env: str, out: outputs.Outputs, session: CallSession, room_on: str, agent_on: str,
                through: str | None = None) -> tuple[str, list[str]]:
    """Join a long call whose room lives on `room_on`, whose agent job runs on `agent_on` and, with
    `through`, whose signalling goes through that node (the room created there, then new tries until a
    job lands on that node's worker). Returns (room, where earlier tries' agents went)."""
    if through is not None:
        with only_through(env, out, through):
            return placed_call(env, out, session, room_on, agent_on)
    node_id = network.node_id(env, room_on, out.spec.port("livekit-prometheus").start)
    nodes = [n.name for n in out.nodes]
    missed: list[str] = []
    for _ in range(COLOCATE_TRIES):
        room = f"longcall-{secrets.token_hex(4)}"
        network.create_room(out, room, node_id)
        joined = session.call(room=room)
        assert joined["ok"], f"the long call did not start: {joined}"
        where = agent_node(env, nodes, room)
        if where == agent_on:
            return room, missed
        missed.append(where)
        session.hangup()
    raise AssertionError(f"no agent job of {COLOCATE_TRIES} calls landed on {agent_on}: {missed}")


def colocated_call(env: str, out: outputs.Outputs, session: CallSession, node: str) -> tuple[str, list[str]]:
    """A long call wholly on `node`: its room, its agent job and its signalling (so that draining
    another node does not wait for it)."""
    return placed_call(env, out, session, room_on=node, agent_on=node, through=node)


class Streamed:
    """A command whose output lines the test reads while it runs (a rolling deploy's progress)."""

    def __init__(self, argv: list[str], cwd: str) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1)
        self.lines: list[str] = []
        self.at: list[float] = []   # each line's seconds from the start
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.at.append(round(time.monotonic() - self.t0, 1))
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    def wait_line(self, needle: str, deadline_s: float) -> str:
        end = time.monotonic() + deadline_s
        while True:
            try:
                line = self._new.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r} within {deadline_s:.0f}s:\n"
                                     + "".join(self.lines[-40:])) from None
            if line is None:
                raise AssertionError(f"the command ended (exit {self.proc.wait()}) before a line with {needle!r}:\n"
                                     + "".join(self.lines[-40:]))
            if needle in line:
                return line

    def timeline(self, needle: str) -> str:
        """The lines with `needle`, each after its seconds from the start (to set calls beside)."""
        return "".join(f"+{at:.1f} s {line}" for at, line in zip(self.at, self.lines) if needle in line)

    def finish(self, timeout_s: float) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return rc, "".join(self.lines)
