"""One load step against the SFU: the generator in the client's place, the node read at the window's ends.

    ctx = Context.create(outputs, node, binary, loop, loadgen_cpus="1")
    step = run_step(ctx, Step("meeting", rooms=4, size=6), duration=30)

The generator runs where a user is: inside the environment's client network namespace for a
local environment (trusting its ACME root), from this machine for a cloud one; pinned with
taskset to CPUs apart from the node's when given. Key and secret travel in its environment,
never in argv. Before a step starts, LiveKit must have closed every room of the one before
(polled against its own room gauge, with a deadline), so each step's memory starts from idle.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from bench.capacity import node as nodemod
from bench.capacity.node import Node
from infra.outputs import Outputs


class StepError(Exception):
    pass


@dataclass(frozen=True)
class Step:
    shape: str        # agent | meeting | broadcast
    rooms: int
    size: int = 0     # meeting: speakers per room; broadcast: listeners per room

    @property
    def participants(self) -> int:
        return {"agent": 2, "meeting": self.size, "broadcast": self.size + 1}[self.shape] * self.rooms

    @property
    def publishers(self) -> int:
        return {"agent": 2, "meeting": self.size, "broadcast": 1}[self.shape] * self.rooms

    @property
    def streams(self) -> int:
        """Audio streams the SFU forwards once everyone hears everyone."""
        per_room = {"agent": 2, "meeting": self.size * (self.size - 1), "broadcast": self.size}[self.shape]
        return per_room * self.rooms

    def label(self) -> str:
        if self.shape == "agent":
            return f"{self.rooms} x 1:1"
        if self.shape == "meeting":
            return f"{self.rooms} x meeting of {self.size}"
        return f"{self.rooms} x 1 speaker -> {self.size}"


@dataclass
class Context:
    outputs: Outputs
    node: Node
    binary: Path
    loop: Path
    loadgen_cpus: str | None      # taskset list for the generator, None = unpinned
    livekit_cpus: int             # CPUs LiveKit may use (its saturation point, in cores)
    interval: float = 5.0
    ice: str = "all"
    progress: Callable[[str], None] = print
    idle_heaps: list[float] = field(default_factory=list)

    def baseline_heap(self, idle: dict[str, Any]) -> float:
        """LiveKit's idle Go heap: the lowest seen idle this run (garbage of the last step
        lingers until the next GC, which an idle server may not run for minutes)."""
        value = idle["prom"].get("go_memstats_heap_inuse_bytes", 0)
        if value:
            self.idle_heaps.append(value)
        return min(self.idle_heaps) if self.idle_heaps else 0.0

    def argv_prefix(self) -> list[str]:
        argv: list[str] = []
        if self.outputs.client_netns:
            argv += ["ip", "netns", "exec", self.outputs.client_netns]
        if self.loadgen_cpus:
            argv += ["taskset", "-c", self.loadgen_cpus]
        return argv


def check_target(outputs: Outputs) -> str:
    """Refuse to load anything but the environment's own LiveKit node.

    Local environments: the LiveKit name must resolve, inside the client namespace, to one of
    the environment's node addresses (the machines in the namespaces the project made).
    Returns the address it resolved to ("" for a cloud environment, the operator's own servers).
    """
    host = urlparse(outputs.livekit_url).hostname or ""
    if not outputs.client_netns:
        return ""
    probe = ("import socket,sys; print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 443, "
             "socket.AF_INET)})[0])")
    proc = subprocess.run(["ip", "netns", "exec", outputs.client_netns, "python3", "-c", probe, host],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise StepError(f"failed to resolve {host} inside {outputs.client_netns}: {proc.stderr.strip()[-300:]} "
                        f"— is the environment up? (make up ENV={outputs.env})")
    address = proc.stdout.strip()
    nodes = {n.public_ip for n in outputs.nodes}
    if address not in nodes:
        raise StepError(f"{host} resolves to {address} inside {outputs.client_netns}, not to a node of "
                        f"{outputs.env} ({', '.join(sorted(nodes))}): refusing to send load elsewhere")
    socket.inet_aton(address)
    return address


def client_udp(outputs: Outputs) -> dict[str, int]:
    """The generator side's UDP counters (its namespace's): receive-buffer overflows there are
    loss the generator caused by not reading fast enough, not the SFU's."""
    argv = ["cat", "/proc/net/snmp"]
    if outputs.client_netns:
        argv = ["ip", "netns", "exec", outputs.client_netns, *argv]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    lines = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) == 2 else {}


def list_rooms(outputs: Outputs) -> list[dict[str, Any]]:
    """Rooms as LiveKit's RoomService lists them (agent.admin, from the client side)."""
    root = Path(__file__).resolve().parents[2]
    argv = [str(root / ".venv" / "bin" / "python"), "-m", "agent.admin", "--env", outputs.env, "--json", "rooms"]
    if outputs.client_netns:
        argv = ["ip", "netns", "exec", outputs.client_netns, *argv]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise StepError(f"failed to list rooms: {' '.join(argv)}: {proc.stderr.strip()[-500:]}")
    text = proc.stdout.strip()
    return json.loads(text) if text.startswith("[") else []


def wait_idle(ctx: Context, deadline_s: float = 300) -> dict[str, Any]:
    """Poll LiveKit's room gauge until no room is left; returns the idle snapshot.

    The snapshot's "drain_s" is how long that took: normally the departure timeout; after a
    step whose joins failed under overload, LiveKit can hold a half-joined participant's room
    for minutes (a finding the report shows, not a reason to stop the ramp).
    """
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    while True:
        snap = ctx.node.snapshot()
        rooms = snap["prom"].get("livekit_room_total", 0)
        participants = snap["prom"].get("livekit_participant_total", 0)
        # LiveKit 1.13.5's room gauge can stay up after a room whose joins failed has closed:
        # with no participant left, ask the RoomService, which is authoritative.
        if rooms > 0 and participants <= 0 and not list_rooms(ctx.outputs):
            snap["stale_room_gauge"] = rooms
            rooms = 0
        if rooms <= 0:
            snap["drain_s"] = time.monotonic() - t0
            return snap
        if time.monotonic() > deadline:
            raise StepError(f"LiveKit still has {rooms:.0f} room(s) {deadline_s:.0f} s after the last step "
                            f"ended: rooms are left behind (scripts/lk-admin.sh --env {ctx.outputs.env} rooms)")
        time.sleep(2)


@dataclass
class StepResult:
    step: Step
    ok: bool
    reason: str                     # why not ok ("" when ok)
    streams: int                    # forwarded streams planned
    received_streams: int           # subscriptions the generator measured
    loss_pct: float
    jitter_ms_p95: float
    jitter_ms_max: float
    rtp_kbps_per_stream: float      # RTP header + payload, as the subscriber received it
    node_kbps_per_stream: float     # all bytes the node sent / forwarded streams (IP, UDP, SRTP, RTCP)
    livekit_cores: float
    livekit_mem_mib: float          # resident (PSS or cgroup) at the window's end
    livekit_mem_idle_mib: float
    livekit_heap_mib: float         # Go heap in use (Prometheus) at the window's end
    livekit_heap_idle_mib: float
    agent_cores: float
    loadgen_cores: float
    join_s: float
    udp_rcvbuf_errors: float        # node's UDP receive-buffer overflows during the window
    udp_sndbuf_errors: float
    seconds: float
    client_rcvbuf_errors: float = 0.0  # the generator side's UDP receive-buffer overflows
    drain_before_s: float = 0.0     # how long the previous step's rooms took to close
    events: dict[str, Any] = field(default_factory=dict)

    @property
    def mcores_per_stream(self) -> float:
        # Per stream actually forwarded: a step whose joins partly failed forwarded fewer.
        return 1000 * self.livekit_cores / self.received_streams if self.received_streams else 0.0

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["step"] = {**asdict(self.step), "label": self.step.label(), "participants": self.step.participants}
        d["mcores_per_stream"] = round(self.mcores_per_stream, 3)
        d.pop("events")
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def _events(proc: subprocess.Popen[str], deadline: float) -> Any:
    assert proc.stdout is not None
    for line in proc.stdout:
        if time.monotonic() > deadline:
            raise StepError("the load generator ran past its deadline")
        line = line.strip()
        if line.startswith("{"):
            yield json.loads(line)


def wait_gone(ctx: Context, prefix: str, deadline_s: float = 300) -> dict[str, Any]:
    """Wait until the RoomService lists no room named `prefix`…; returns a snapshot.

    For runs that share the server with other rooms on purpose (the soak's agent
    conversations), where "the server is idle" never holds.
    """
    t0 = time.monotonic()
    while True:
        left = [r.get("name", "") for r in list_rooms(ctx.outputs) if r.get("name", "").startswith(prefix)]
        if not left:
            snap = ctx.node.snapshot()
            snap["drain_s"] = time.monotonic() - t0
            return snap
        if time.monotonic() - t0 > deadline_s:
            raise StepError(f"{len(left)} room(s) of {prefix}* still listed {deadline_s:.0f} s after their step "
                            f"ended (e.g. {left[0]}): rooms are left behind")
        time.sleep(2)


def run_step(ctx: Context, step: Step, duration: float, warmup: float = 3.0, prefix: str | None = None,
             ready_timeout: float = 180.0, livekit_limit: float = 0.9, loadgen_limit: float = 0.85,
             after_prefix: str | None = None) -> StepResult:
    """after_prefix: wait only for that earlier step's rooms to close, not for an idle server."""
    idle = wait_gone(ctx, after_prefix) if after_prefix else wait_idle(ctx)
    prefix = prefix or f"lg{int(time.time()) % 100000:05d}"
    argv = [*ctx.argv_prefix(), str(ctx.binary), "--url", ctx.outputs.livekit_url, "--shape", step.shape,
            "--rooms", str(step.rooms), "--size", str(step.size or 2), "--audio", str(ctx.loop),
            "--duration", f"{duration}s", "--warmup", f"{warmup}s", "--interval", f"{ctx.interval}s",
            "--ready-timeout", f"{ready_timeout}s", "--prefix", prefix, "--ice", ctx.ice, "--control"]
    env = dict(os.environ, LIVEKIT_API_KEY=ctx.outputs.api_key, LIVEKIT_API_SECRET=ctx.outputs.api_secret)
    if ctx.outputs.ca_bundle:
        env["SSL_CERT_FILE"] = ctx.outputs.ca_bundle
    stderr_path = Path(f"/tmp/voicestack-loadgen-{os.getpid()}.log")
    deadline = time.monotonic() + ready_timeout + warmup + duration + 180
    events: dict[str, Any] = {}
    heap_samples: list[float] = []
    start = end = None
    client_start: dict[str, int] = {}
    client_end: dict[str, int] = {}
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdin is not None

        def go_on() -> None:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

        try:
            # The generator holds full load while the node is read on both sides of its window,
            # so the node's interval [start, end] is all steady load whatever SSH's latency.
            for ev in _events(proc, deadline):
                events[ev["event"]] = ev
                if ev["event"] == "await_start":
                    start = ctx.node.snapshot()
                    client_start = client_udp(ctx.outputs)
                    go_on()
                elif ev["event"] == "await_stop":
                    end = ctx.node.snapshot()
                    client_end = client_udp(ctx.outputs)
                    go_on()
                elif ev["event"] == "stats":
                    # Go's heap in use swings with each GC cycle; its minimum over the window is
                    # the closest to the live heap the load needs.
                    try:
                        heap_samples.append(ctx.node.snapshot()["prom"].get("go_memstats_heap_inuse_bytes", 0))
                    except nodemod.NodeError:
                        pass
                    ctx.progress(f"    {step.label()}: {ev['streams']} streams, loss {ev['loss_pct']:.2f}%, "
                                 f"jitter p95 {ev['jitter_ms_p95']:.1f} ms")
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if proc.returncode != 0 or start is None or end is None:
        tail = stderr_path.read_text()[-2000:]
        raise StepError(f"the load generator failed at {step.label()} (exit {proc.returncode}): {tail} "
                        f"— argv: {' '.join(argv)}")
    w, ready = events["window_end"], events["ready"]
    livekit_cores = nodemod.cores(start, end, "livekit")
    _, tx = nodemod.net_bytes(start, end)
    reasons = []
    if not w["complete"]:
        reasons.append(f"only {ready['subscribed']}/{step.streams} subscriptions within {ready_timeout:.0f} s "
                       f"({ready['join_errors']} failed joins: {ready.get('first_join_error', '')[:200]})")
    if w["loss_pct"] > 1.0:
        reasons.append(f"loss {w['loss_pct']:.2f}% > 1%")
    if w["stalled_streams"]:
        reasons.append(f"{w['stalled_streams']} streams received nothing")
    if livekit_cores >= livekit_limit * ctx.livekit_cpus:
        reasons.append(f"LiveKit CPU {livekit_cores:.2f} cores >= {livekit_limit:.0%} of {ctx.livekit_cpus}")
    if w["loadgen_cpu_cores"] >= loadgen_limit:
        reasons.append(f"generator-bound: the generator used {w['loadgen_cpu_cores']:.2f} of its core")
    client_drops = client_end.get("RcvbufErrors", 0) - client_start.get("RcvbufErrors", 0)
    if client_drops > 0.001 * max(1, w["rx_expected"]):
        reasons.append(f"generator-bound: {client_drops} packets overflowed the generator's receive buffers")
    mib = 1 / (1024 * 1024)
    return StepResult(
        step=step, ok=not reasons, reason="; ".join(reasons), streams=step.streams,
        received_streams=w["streams"], loss_pct=w["loss_pct"], jitter_ms_p95=w["jitter_ms_p95"],
        jitter_ms_max=w["jitter_ms_max"], rtp_kbps_per_stream=w["rx_kbps_per_stream"],
        node_kbps_per_stream=tx * 8 / 1000 / max(1, w["streams"]), livekit_cores=livekit_cores,
        livekit_mem_mib=end["units"]["livekit"]["mem_bytes"] * mib,
        livekit_mem_idle_mib=idle["units"]["livekit"]["mem_bytes"] * mib,
        livekit_heap_mib=min(x for x in [*heap_samples, end["prom"].get("go_memstats_heap_inuse_bytes", 0)] if x) * mib,
        livekit_heap_idle_mib=ctx.baseline_heap(idle) * mib,
        agent_cores=nodemod.cores(start, end, "voicestack-agent"),
        loadgen_cores=w["loadgen_cpu_cores"], join_s=ready["join_s"],
        udp_rcvbuf_errors=nodemod.delta(start, end, "udp", "RcvbufErrors"),
        udp_sndbuf_errors=nodemod.delta(start, end, "udp", "SndbufErrors"),
        seconds=end["t"] - start["t"],
        client_rcvbuf_errors=client_end.get("RcvbufErrors", 0) - client_start.get("RcvbufErrors", 0),
        drain_before_s=idle.get("drain_s", 0.0), events=events,
    )
