"""The cluster's health-checked entry: the LiveKit name is the load balancer (infra/local/balancer.py,
HAProxy in TCP mode with PROXY v2 and HTTP health checks, as the cloud programs declare on Hetzner
and DigitalOcean). A node that drains or loses power leaves the balancer, new calls keep
succeeding through the others, a call wholly on another node keeps its audio, and a node that
comes back rejoins with no operator action.

Runs on the package's three-node cluster (conftest.py), after the cross-node call (the module
order of the package), and leaves every node running.
"""
from __future__ import annotations

import threading
import time

import pytest

from deploy import rolling
from infra import outputs
from infra.local import balancer, host, power
from infra.local.names import EnvNames
from infra.probes.roundtrip import CallSession, round_trips
from infra.spec import drain_flag_command
from tests.e2e import callers, envs, network

ENV = envs.CLUSTER_ENV
#: Seconds a state change of a target may take to show: the health check's detection time
#: (interval x retries, plus its timeout) with room for a loaded 2-core machine.
SETTLE_S = 60
#: Seconds until new calls must succeed again after a node loses power (the balancer's detection,
#: LiveKit's and the agent workers' view of the lost node, and a failed call's own timeout).
RECOVER_S = 240
#: Seconds a powered-on node may take to boot and answer the health check again.
REJOIN_S = 240

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(nat_cluster):
    return nat_cluster


def wait_state(names: EnvNames, node: str, up: bool, deadline_s: float) -> float:
    return balancer.wait_for(names, node, up=up, deadline_s=deadline_s)


def one_call(out: outputs.Outputs) -> dict:
    (result,) = round_trips(out, 1, timeout=60)
    return result


def test_01_the_livekit_name_is_the_balancer_and_every_node_is_healthy(env) -> None:
    out, names = outputs.read(ENV), EnvNames(ENV)
    assert out.dns[out.livekit_domain] == [balancer.public_ip(names)] == [out.balancer_ip]
    for node in out.spec.balancer.targets:
        wait_state(names, node, up=True, deadline_s=SETTLE_S)


def test_01b_the_health_check_is_answered_with_a_proxy_v1_header_and_without_one(env) -> None:
    """The balancer here checks with PROXY v2 (test_01: every node UP); DigitalOcean's checks carry
    v1, and a provider may send none: each node's health listener answers all three."""
    out, names = outputs.read(ENV), EnvNames(ENV)
    health = out.spec.balancer.health
    for name in out.spec.balancer.targets:
        url = f"http://{out.node(name).private_ip}:{health.port}{health.path}"
        for header in ([], ["--haproxy-protocol"]):
            # From the balancer's own namespace: the private network's .5, as the checks come.
            proc = host.run(["ip", "netns", "exec", balancer.netns(names), "curl", "-s", "-m", "10",
                             "-o", "/dev/null", "-w", "%{http_code}", *header, url], check=False)
            assert proc.stdout.strip() == "200", (name, header, proc.stdout, proc.stderr)


def test_02_a_draining_node_leaves_the_balancer_and_calls_go_elsewhere(env, figure) -> None:
    out, names = outputs.read(ENV), EnvNames(ENV)
    health = out.spec.balancer.health
    node = out.node("node-2")
    network.ssh(ENV, node.name, drain_flag_command(on=True))
    try:
        code = network.ssh(ENV, node.name, f"curl -s -o /dev/null -w '%{{http_code}}' "
                                           f"http://{node.private_ip}:{health.port}{health.path}")
        assert code.strip() == "503", code
        took = wait_state(names, node.name, up=False, deadline_s=SETTLE_S)
        figure(f"drain flag on {node.name}: out of the balancer after {took:.1f}s")
        result = one_call(out)
        assert result["ok"], result.get("error")
    finally:
        network.ssh(ENV, node.name, drain_flag_command(on=False))
    took = wait_state(names, node.name, up=True, deadline_s=SETTLE_S)
    figure(f"drain flag off: {node.name} back in the balancer after {took:.1f}s")


#: Seconds the drain of a node may take once its last call has hung up.
DRAINED_S = 180


def unit_state(node: str, unit: str) -> str:
    return network.ssh(ENV, node, f"systemctl show -p ActiveState --value {unit}").strip()


def test_02b_a_drain_keeps_the_calls_it_carries_for_rooms_on_other_nodes(env, figure) -> None:
    """node-2 drains (deploy.rolling.drain_services, as the rolling deploy does) while it carries two
    calls whose rooms live on node-1, which LiveKit's own drain does not wait for:
    - call B's client joined through node-2 (the only node in the balancer then), its WebSocket
      relayed to node-1, its agent on node-3: the drain waits for it with everything running
      (B gets its answer meanwhile) and goes on once B has hung up;
    - call A's agent job runs on node-2's worker and signals through node-2's LiveKit (the
      worker's LIVEKIT_URL is local), which relays it to node-1; A's client joined through
      node-3: LiveKit must stay up while the worker drains, and A gets its answer then."""
    out, names = outputs.read(ENV), EnvNames(ENV)
    draining = "node-2"
    steps: list[tuple[str, float]] = []
    with CallSession(out) as call_a, CallSession(out) as call_b:
        room_b, _ = callers.placed_call(ENV, out, call_b, room_on="node-1", agent_on="node-3", through=draining)
        room_a, _ = callers.placed_call(ENV, out, call_a, room_on="node-1", agent_on=draining, through="node-3")
        print(f"call A {room_a}: room on node-1, agent on {draining}, signalling through node-3; call B "
              f"{room_b}: room on node-1, signalling through {draining}, agent on node-3")
        network.ssh(ENV, draining, drain_flag_command(on=True))
        try:
            wait_state(names, draining, up=False, deadline_s=SETTLE_S)
            assert rolling.clients_signalling(out, draining) == 1, "call B's WebSocket is not seen on its node"
            drain = threading.Thread(target=lambda: steps.extend(rolling.drain_services(out, draining)), daemon=True)
            t0 = time.monotonic()
            drain.start()
            heard_lights(call_b.speak(), f"call B, which signals through {draining}")
            assert drain.is_alive(), f"the drain of {draining} ended while call B signalled through it: {steps}"
            assert {unit_state(draining, u) for u in ("voicestack-agent", "livekit")} == {"active"}, (
                f"{draining}'s services stopped while a client still signalled through it")
            call_b.hangup()
            host.wait_until(f"{draining}'s agent worker to be draining (systemd: deactivating) after B hung up",
                            lambda: unit_state(draining, "voicestack-agent") == "deactivating", 60, interval=0.5)
            assert unit_state(draining, "livekit") == "active", "LiveKit stopped while the agent worker drained"
            heard_lights(call_a.speak(), f"call A, whose agent is on {draining}")
            assert drain.is_alive(), f"the drain of {draining} ended while its worker still had a call: {steps}"
            call_a.hangup()
            drain.join(timeout=DRAINED_S)
            assert not drain.is_alive(), f"{draining} did not finish draining {DRAINED_S}s after call A hung up"
            figure(f"{draining} drained in {time.monotonic() - t0:.1f}s with calls B and A: "
                   + ", then ".join(f"{what} {seconds:.1f}s" for what, seconds in steps))
            assert [what for what, _s in steps] == ["clients", "agent services", "livekit"], steps
            assert unit_state(draining, "livekit") == "inactive"
        finally:
            network.ssh(ENV, draining, "systemctl start livekit voicestack-agent", timeout=120)
            network.ssh(ENV, draining, drain_flag_command(on=False))
    wait_state(names, draining, up=True, deadline_s=REJOIN_S)
    result = one_call(out)
    assert result["ok"], result.get("error")


def heard_lights(answer: dict, which: str) -> None:
    assert callers.answered_lights(answer), f"{which} lost its agent during the drain: {answer}"


#: node-3 holds nothing special; node-1 is the first Redis primary (Sentinel must promote a replica
#: before LiveKit routes again), the node that obtains the certificates and the TURN name's node.
@pytest.mark.parametrize("victim", ["node-3", "node-1"])
def test_03_after_a_power_cut_new_calls_succeed_again_and_the_node_rejoins_by_itself(env, victim, figure) -> None:
    """A node loses power: a call wholly on a surviving node (room, agent, signalling) keeps its
    audio (the agent answers it right after the cut and again once new calls succeed); new calls
    through the balancer succeed again within RECOVER_S (the time until they do is printed: the
    balancer's detection and LiveKit's own view of the node), and from the first success on every
    new call succeeds; powered on, the node rejoins."""
    out, names = outputs.read(ENV), EnvNames(ENV)
    survivor = "node-2"
    with CallSession(out) as session:
        room, _ = callers.colocated_call(ENV, out, session, survivor)
        t0 = time.monotonic()
        power.power(ENV, victim, "off")
        try:
            heard_lights(session.speak(), f"the call wholly on {survivor} ({room}), right after {victim}'s power cut")
            kept_s = time.monotonic() - t0
            calls: list[tuple[float, bool, str | None]] = []
            while not any(ok for _t, ok, _e in calls):
                assert time.monotonic() - t0 < RECOVER_S, f"no new call succeeded with {victim} powered off: {calls}"
                result = one_call(out)
                calls.append((round(time.monotonic() - t0, 1), result["ok"], result.get("error")))
                print(f"call ended +{calls[-1][0]}s after the power cut: ok={result['ok']} {result.get('error') or ''}",
                      flush=True)
            recovered = calls[-1][0]
            wait_state(names, victim, up=False, deadline_s=SETTLE_S)
            for _ in range(2):
                result = one_call(out)
                assert result["ok"], f"a new call failed after calls had recovered: {result.get('error')} ({calls})"
            heard_lights(session.speak(), f"the call wholly on {survivor} ({room}), once new calls succeeded again")
            session.hangup()
            figure(f"{victim} powered off: the call on {survivor} answered {kept_s:.1f}s after the cut; first new "
                   f"call to succeed ended {recovered}s after the cut ({len(calls) - 1} failed before it), "
                   "the next two succeeded too")
        finally:
            t1 = time.monotonic()
            power.power(ENV, victim, "on")
    wait_state(names, victim, up=True, deadline_s=REJOIN_S)
    figure(f"{victim}: back in the balancer {time.monotonic() - t1:.1f}s after power on")
    result = one_call(out)
    assert result["ok"], result.get("error")
