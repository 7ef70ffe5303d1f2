"""`python -m deploy --env <env> --rolling`: converge a cluster one node at a time, each out of
the load balancer while it changes, so no new call is sent to a node that is restarting.

For each of the balancer's targets with something to do (the one-SSH check, deploy/fastpath.py):

1. the drain flag (spec.DRAIN_FLAG) goes on: the node's health check answers 503 at once;
2. the balancer takes the node out (locally HAProxy says so; a cloud balancer's view is the
   provider's, so its detection window, interval x retries + timeout, is waited out);
3. the node drains in three steps. First its clients: a client that joined through this node
   keeps its signalling WebSocket here (through Caddy to this LiveKit) whichever node hosts its
   room; the balancer sends no new ones, and the drain waits until the open ones have ended (up
   to `livekitStopTimeout` seconds), with everything still running, so that no call has its
   signalling cut. Then the agent services, LiveKit last (SIGTERM each). The agent worker (and
   the recorder) take no new job and finish their running ones (AGENT_DRAIN_TIMEOUT), signalling
   through this node's LiveKit until they are done: their LIVEKIT_URL is local, and LiveKit relays
   a job's signalling to whichever node hosts its room, so LiveKit must outlive them (systemd's
   After= gives that order in one transaction too; two steps also time each). Then LiveKit marks
   itself shutting down in Redis, so the other nodes place no new room on it, and waits until its
   rooms are empty, up to `livekitStopTimeout` seconds (the drain deadline). LiveKit's drain waits
   only for the rooms it hosts, hence the first step: a client still signalling through this
   node when LiveKit stops (the first step's deadline passed) reconnects through another node.
   The balancer alone is not enough: rooms are placed, and agent jobs dispatched, across nodes
   through Redis;
4. the node converges alone (`deploy.full --limit <node>`), which starts both again;
5. LiveKit answers again, the flag comes off, and the balancer takes the node back before the
   next node starts (its rise window, or HAProxy's UP).

A node whose converge fails stays out of the balancer (its flag stays on) and the rolling deploy
stops there: a half-converged node gets no calls, and the others keep serving. Re-running the
rolling deploy after the fix converges it and puts it back. Nodes the balancer does not target
(none in today's specs) converge afterwards in one run.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy import fastpath
from deploy.tasks.agent import DRAIN_SECONDS, DRAIN_VARS, STOP_GRACE_SECONDS
from infra import outputs as outputsmod
from infra.local.host import LocalEnvError
from infra.local.host import wait_until as wait
from infra.spec import DRAIN_FLAG, Role, drain_flag_command

ROOT = Path(__file__).resolve().parents[1]
#: Seconds the balancer may take to change its view of a node (its detection is a few checks;
#: room for a loaded machine).
BALANCER_DEADLINE_S = 90
#: Seconds a converged node's LiveKit may take to answer the health check again.
HEALTHY_DEADLINE_S = 120
#: Seconds one node's converge may take (a LiveKit restart's drain included, added per deploy).
CONVERGE_BASE_S = 1800


class RollingError(Exception):
    """The rolling deploy cannot start (bad input: nothing has changed on any node)."""


@dataclass(frozen=True)
class NodeResult:
    node: str
    drained: bool
    out_s: float = 0.0       # flag on -> out of the balancer
    converge_s: float = 0.0  # the node's own converge (its LiveKit drain included)
    back_s: float = 0.0      # flag off -> back in the balancer
    drain_s: float = 0.0     # the agent services' stop, then LiveKit's (step 3)


def ssh(out: outputsmod.Outputs, node: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fastpath.ssh_argv(out, out.node(node), command), capture_output=True, text=True,
                          timeout=timeout)


def health_code(out: outputsmod.Outputs, node: str) -> str:
    """The node's answer to the balancer's health check, asked on the node itself ("000": none)."""
    hc = out.spec.balancer.health
    url = f"http://{out.node(node).private_ip}:{hc.port}{hc.path}"
    proc = ssh(out, node, f"curl -s -m 5 -o /dev/null -w '%{{http_code}}' {shlex.quote(url)}")
    return proc.stdout.strip()[-3:] or "000"


def balancer_view(out: outputsmod.Outputs, node: str, up: bool) -> float:
    """Seconds until the balancer has `node` in (up) or out; see the module docstring."""
    if out.spec.config.provider == "local":
        from infra.local import balancer
        from infra.local.names import EnvNames
        return balancer.wait_for(EnvNames(out.spec.env), node, up=up, deadline_s=BALANCER_DEADLINE_S)
    hc = out.spec.balancer.health
    window = hc.interval_s * hc.retries + hc.timeout_s
    time.sleep(window)  # the provider's detection window: no API to ask from here
    return float(window)


def set_flag(out: outputsmod.Outputs, node: str, on: bool) -> None:
    proc = ssh(out, node, drain_flag_command(on))
    if proc.returncode != 0:
        raise RuntimeError(f"{node}: could not {'set' if on else 'remove'} the drain flag: {proc.stderr.strip()[-400:]}")


LIVEKIT_UNIT = "livekit.service"
#: Seconds beyond a stop's own drain deadline it may take.
DRAIN_MARGIN_S = 120


def stop_units(out: outputsmod.Outputs, node: str, units: list[str], deadline_s: float) -> float:
    """Seconds until `units` have stopped (their drains done; systemd kills what outlasts them)."""
    started = time.monotonic()
    proc = ssh(out, node, "systemctl stop " + " ".join(units), timeout=deadline_s + DRAIN_MARGIN_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{node}: could not stop {', '.join(units)} for the drain: "
                           f"{proc.stderr.strip()[-400:]}; the node stays out of the balancer")
    return time.monotonic() - started


#: The process that holds each client's connection to LiveKit on a node (its reverse proxy,
#: which keeps no idle one: deploy/templates/caddy/Caddyfile.j2).
CLIENTS_VIA = "caddy"
#: Seconds between two counts of a node's clients.
CLIENTS_POLL_S = 2.0


def clients_signalling(out: outputsmod.Outputs, node: str) -> int:
    """How many connections the node's reverse proxy holds open to its LiveKit: the clients that
    joined through this node (their signalling WebSockets) and requests in flight."""
    port = out.spec.port("livekit-http").start
    proc = ssh(out, node, f"ss -Htnp state established '( dport = :{port} )'")
    if proc.returncode != 0:
        raise RuntimeError(f"{node}: could not count the clients signalling through it: "
                           f"{proc.stderr.strip()[-400:]}; the node stays out of the balancer")
    return sum(f'(("{CLIENTS_VIA}"' in line for line in proc.stdout.splitlines())


def wait_for_clients(out: outputsmod.Outputs, node: str, deadline_s: float) -> float:
    """Seconds until no client signals through the node, or the deadline (then LiveKit's stop
    cuts the rest, which reconnect through another node)."""
    started = time.monotonic()
    while clients_signalling(out, node) and time.monotonic() - started < deadline_s:
        time.sleep(CLIENTS_POLL_S)
    return time.monotonic() - started


def drain_services(out: outputsmod.Outputs, node: str) -> list[tuple[str, float]]:
    """Drains the node (the module docstring, step 3): (what, seconds) for each step done."""
    roles = out.node(node).roles
    took = []
    if Role.LIVEKIT.value in roles:
        took.append(("clients", wait_for_clients(out, node, out.spec.config.livekit_stop_timeout)))
    # LiveKit's own clients on the node, stopped before it: those of its units that drain their
    # jobs on SIGTERM (the worker; the recorder where recording is on).
    clients = [f"{unit}.service" for unit in fastpath.units_for(out, node) if unit in DRAIN_VARS]
    if clients:
        took.append(("agent services", stop_units(out, node, clients, DRAIN_SECONDS + STOP_GRACE_SECONDS)))
    if Role.LIVEKIT.value in roles:
        took.append(("livekit", stop_units(out, node, [LIVEKIT_UNIT], out.spec.config.livekit_stop_timeout)))
    return took


def converge(env: str, node: str, verbose: bool, timeout: float) -> int:
    argv = [sys.executable, "-m", "deploy.full", "--env", env, "--limit", node, *(["-v"] if verbose else [])]
    return subprocess.run(argv, cwd=ROOT, timeout=timeout).returncode


def plan(out: outputsmod.Outputs, limit: tuple[str, ...], full: bool = False) -> tuple[list[str], list[str]]:
    """(balancer targets to converge one by one, other nodes to converge after them): the nodes
    in `limit` (all without one) whose one-SSH check finds something to do (every one: `full`)."""
    if out.spec.balancer is None:
        raise RollingError("--rolling needs a cluster behind a load balancer (nodeCount >= 2 on hetzner, "
                           "digitalocean or local); a single node has nowhere to send calls meanwhile")
    unknown = [n for n in limit if n not in {node.name for node in out.nodes}]
    if unknown:
        raise RollingError(f"no node named {', '.join(unknown)} in this environment")
    chosen = [n.name for n in out.nodes if not limit or n.name in limit]
    dirty = set(chosen) if full else {c.node for c in fastpath.check(out, limit) if not c.clean}
    targets = [n for n in out.spec.balancer.targets if n in dirty]
    return targets, sorted(dirty - set(targets))


def roll_node(out: outputsmod.Outputs, node: str, verbose: bool) -> NodeResult:
    env = out.spec.env
    set_flag(out, node, on=True)
    wait(f"{node}'s health check to answer 503 (drain flag on)", lambda: health_code(out, node) == "503", 30)
    out_s = balancer_view(out, node, up=False)
    print(f"rolling {env}: {node} out of the balancer {out_s:.1f}s after its drain flag; draining it",
          flush=True)
    stages = drain_services(out, node)
    drain_s = sum(seconds for _what, seconds in stages)
    print(f"rolling {env}: {node} drained in {drain_s:.1f}s ("
          + ", then ".join(f"{what} {seconds:.1f}s" for what, seconds in stages) + "); converging it", flush=True)
    started = time.monotonic()
    code = converge(env, node, verbose, CONVERGE_BASE_S + out.spec.config.livekit_stop_timeout)
    converge_s = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"{node}: the converge failed (exit {code}); the node stays out of the balancer "
                           f"(drain flag {DRAIN_FLAG} on). Fix it and run the rolling deploy again")
    set_flag(out, node, on=False)
    wait(f"{node}'s health check to answer 200 after the converge", lambda: health_code(out, node) == "200",
         HEALTHY_DEADLINE_S)
    back_s = balancer_view(out, node, up=True)
    print(f"rolling {env}: {node} converged in {converge_s:.1f}s, back in the balancer {back_s:.1f}s after "
          "its flag came off", flush=True)
    return NodeResult(node, True, out_s, converge_s, back_s, drain_s)


def main(env: str, limit: tuple[str, ...], verbose: bool, full: bool = False) -> int:
    try:
        out = outputsmod.read(env)
        targets, others = plan(out, limit, full)
    except (outputsmod.OutputsError, RollingError) as exc:
        print(f"deploy {env}: {exc}", file=sys.stderr)
        return 2
    if not targets and not others:
        print(f"deploy {env}: every node unchanged since the last converge: nothing to roll")
        return 0
    print(f"rolling {env}: {', '.join(targets) or 'no balancer target'} one at a time"
          + (f", then {', '.join(others)}" if others else ""), flush=True)
    results = []
    started = time.monotonic()
    for node in targets:
        try:
            results.append(roll_node(out, node, verbose))
        except (RuntimeError, LocalEnvError, subprocess.TimeoutExpired) as exc:
            print(f"deploy {env}: {exc}", file=sys.stderr)
            return 1
    if others:
        code = subprocess.run([sys.executable, "-m", "deploy.full", "--env", env,
                               *(a for n in others for a in ("--limit", n))], cwd=ROOT).returncode
        if code != 0:
            return code
    print(f"rolling {env}: {len(results)} node(s) rolled in {time.monotonic() - started:.1f}s "
          + ", ".join(f"{r.node} (out {r.out_s:.1f}s, drain {r.drain_s:.1f}s, converge {r.converge_s:.1f}s, back {r.back_s:.1f}s)"
                      for r in results), flush=True)
    return 0
