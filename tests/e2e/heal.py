"""The bad-day steps of one node, shared by the chaos suite (tests/e2e/test_chaos.py, `make
test-e2e-long`: every unit, Redis, deploys under a live call) and its smoke in `make test`
(tests/e2e/test_verify_faults.py: coturn and LiveKit killed, a reboot, a power cut, on the
environment that module deploys anyway). Each step asserts what the user gets back and returns
its recovery figures; the figures are printed, never asserted."""
from __future__ import annotations

import subprocess
import time
from typing import Any

from infra import outputs
from infra.local import chaos, machines, power
from infra.local.up import Context
from infra.probes.roundtrip import CallSession

#: Deadline for the first passing round trip after a fault (the unit's own return is within
#: chaos.BACK_DEADLINE_S). Generous: a loaded 2-core CI host takes ~40 s per round trip.
ROUND_TRIP_DEADLINE_S = 240
#: What a caller must hear back: the scripted responder's answer to "turn on the lights".
ANSWER = "turned on the lights"


def ssh(ctx: Context, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return machines.ssh(ctx.names, ctx.names.node_public_ip(0), command, check=False, timeout=timeout)


def kill_9(ctx: Context, out: outputs.Outputs, unit: str, session: CallSession | None = None
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """kill -9 `unit`'s main process on the first node; once systemd restarted it, spoken round
    trips until one passes. coturn's case takes the round trip through TURN/TLS on 443 only (the
    path nothing but coturn serves). Returns (figures, the kill's result, the passing trip)."""
    node = ctx.spec.nodes[0]
    targets = {t.unit: t for t in chaos.targets(ctx.spec, node)}
    result = chaos.kill_and_wait(ctx.names, node, targets[unit])
    assert result["new_pid"] != result["old_pid"] and result["restarts"] >= 1, result
    condition = "tcp443-only" if unit == "coturn.service" else "normal"
    trip = chaos.round_trip_until(out, ROUND_TRIP_DEADLINE_S, condition, since=result["killed_at"], session=session)
    figures = {"active_s": result["active_s"], "answers_s": result["answers_s"],
               "round_trip_after_s": round(trip["after_s"], 1), "attempts": trip["attempts"],
               "latency_s": round(trip.get("latency_s", 0), 2), "condition": condition,
               "failed_attempts": trip["errors"]}
    print(f"\n{unit}: {figures}")
    assert trip["ok"], f"no spoken round trip within {ROUND_TRIP_DEADLINE_S}s after kill -9 of {unit}: {trip}"
    assert ANSWER in trip["answer"].lower(), trip
    return figures, result, trip


def reboot(ctx: Context) -> dict[str, Any]:
    """`systemctl reboot` inside the first node: back under the same supervisor, systemd running
    with no failed unit, every service answering. The caller runs the verify suite next."""
    got = chaos.reboot(ctx.names, ctx.spec, ctx.spec.nodes[0])
    assert got["same_supervisor"] and got["state"] in ("running", "degraded"), got
    failed = ssh(ctx, "systemctl --failed --no-legend --plain").stdout.strip()
    assert got["state"] == "running", f"after the reboot: {got['state']}, failed units: {failed}"
    figures = {k: round(v, 1) for k, v in got.items() if isinstance(v, float)}
    print(f"\nreboot: {figures}")
    return figures


def power_cut(ctx: Context, out: outputs.Outputs, session: CallSession | None = None) -> dict[str, Any]:
    """Power off (like a pulled plug: no process, no container, no SSH, and it stays off), power on,
    then a spoken round trip."""
    node = ctx.spec.nodes[0]
    ip = ctx.names.node_public_ip(0)
    t0 = time.monotonic()
    power.power(ctx.names.env, node.name, "off")
    assert machines.running_pid(ctx.names, node) is None
    assert machines.container_init_pid(machines.rootfs(ctx.names, node)) is None
    assert not machines.ssh_ready(ctx.names, ip)
    assert machines.running_machines(ctx.names) == []
    t_on = time.time()
    power.power(ctx.names.env, node.name, "on")
    state = ssh(ctx, "systemctl is-system-running --wait", timeout=300).stdout.strip()
    failed = ssh(ctx, "systemctl --failed --no-legend --plain").stdout.strip()
    assert state == "running", f"after power on: {state}, failed units: {failed}"
    ready_s = chaos.wait_ready(ctx.names, ctx.spec, node, since=t_on)
    trip = chaos.round_trip_until(out, ROUND_TRIP_DEADLINE_S, session=session, since=t_on)
    figures = {"off_to_round_trip_s": round(time.monotonic() - t0, 1), "on_to_ready_s": ready_s,
               "on_to_round_trip_s": round(trip["after_s"], 1), "attempts": trip["attempts"]}
    print(f"\npower cycle: {figures}")
    assert trip["ok"], f"no round trip after the power came back: {trip}"
    return figures
