"""The rolling deploy's choices before it touches a node: which nodes roll, in what order, and
what it refuses (the SSH side runs in tests/e2e/cluster/test_rolling.py)."""
from __future__ import annotations

import subprocess

import pytest

from deploy import fastpath, rolling
from tests.unit.support import outputs_for, spec_of


def _checks(clean: dict[str, bool]):
    return lambda out, limit=(): [fastpath.NodeCheck(node=n, clean=c, why="test")
                                  for n, c in clean.items() if not limit or n in limit]


def test_a_single_node_is_refused_before_any_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "check", lambda *a: pytest.fail("no SSH before the input checks"))
    with pytest.raises(rolling.RollingError, match="load balancer"):
        rolling.plan(outputs_for(spec_of(1)), ())


def test_an_unknown_node_is_refused_before_any_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "check", lambda *a: pytest.fail("no SSH before the input checks"))
    with pytest.raises(rolling.RollingError, match="node-9"):
        rolling.plan(outputs_for(spec_of(3)), ("node-2", "node-9"))


def test_only_changed_nodes_roll_in_the_balancers_order(monkeypatch: pytest.MonkeyPatch) -> None:
    out = outputs_for(spec_of(3))
    monkeypatch.setattr(fastpath, "check", _checks({"node-1": False, "node-2": True, "node-3": False}))
    assert rolling.plan(out, ()) == (["node-1", "node-3"], [])
    assert rolling.plan(out, ("node-3",)) == (["node-3"], [])
    # --full: every chosen node, changed or not.
    assert rolling.plan(out, (), full=True) == (["node-1", "node-2", "node-3"], [])


def test_nothing_changed_rolls_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    out = outputs_for(spec_of(3))
    monkeypatch.setattr(fastpath, "check", _checks({"node-1": True, "node-2": True, "node-3": True}))
    assert rolling.plan(out, ()) == ([], [])




#: `ss -Htnp state established '( dport = :7880 )'` on a node: two clients' WebSockets through
#: Caddy, and the agent worker's own connection (not a client that joined through the node).
SS_LINES = {
    "caddy": '0      0      10.77.0.12:43210      10.77.0.12:7880 users:(("caddy",pid=812,fd=23))',
    "worker": '0      0      127.0.0.1:50102       127.0.0.1:7880  users:(("python3.11",pid=901,fd=9))',
}


class FakeNode:
    """A node's side of the drain: the commands it was sent; `clients` is how many clients each
    count of them finds, in turn (the last one stays)."""

    def __init__(self, clients: tuple[int, ...] = (0,)) -> None:
        self.commands: list[tuple[str, float]] = []
        self.clients = list(clients)

    def __call__(self, _out, _node, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        self.commands.append((command, timeout))
        if command.startswith("ss "):
            count = self.clients.pop(0) if len(self.clients) > 1 else self.clients[0]
            return subprocess.CompletedProcess(command, 0, "\n".join([SS_LINES["worker"]] + [SS_LINES["caddy"]] * count), "")
        return subprocess.CompletedProcess(command, 0, "", "")


def test_a_node_waits_for_its_clients_then_drains_its_agent_services_then_its_livekit(monkeypatch) -> None:
    """A client that joined through the node signals through this node's LiveKit whichever node
    hosts its room, and a job on the node's worker may too: first the clients end, then the worker
    is gone before LiveKit stops, each bounded by its own deadline."""
    out = outputs_for(spec_of(3))
    fake = FakeNode(clients=(2, 1, 0))
    monkeypatch.setattr(rolling, "ssh", fake)
    monkeypatch.setattr(rolling, "CLIENTS_POLL_S", 0)
    steps = rolling.drain_services(out, "node-2")
    assert [what for what, _s in steps] == ["clients", "agent services", "livekit"]
    port = out.spec.port("livekit-http").start
    assert [c for c, _t in fake.commands] == [f"ss -Htnp state established '( dport = :{port} )'"] * 3 + [
        "systemctl stop voicestack-agent.service", "systemctl stop livekit.service"]
    agent_t, livekit_t = (t for _c, t in fake.commands[3:])
    assert agent_t > 60 and livekit_t > out.spec.config.livekit_stop_timeout
    recorded = outputs_for(spec_of(3, recording="agent-calls"))
    fake = FakeNode()
    monkeypatch.setattr(rolling, "ssh", fake)
    rolling.drain_services(recorded, "node-1")
    assert fake.commands[1][0] == "systemctl stop voicestack-agent.service voicestack-recorder.service"


def test_only_the_reverse_proxys_connections_count_as_clients(monkeypatch) -> None:
    out = outputs_for(spec_of(3))
    monkeypatch.setattr(rolling, "ssh", FakeNode(clients=(3,)))
    assert rolling.clients_signalling(out, "node-1") == 3
    monkeypatch.setattr(rolling, "ssh", FakeNode(clients=(0,)))
    assert rolling.clients_signalling(out, "node-1") == 0   # the worker's own connection is not one


def test_clients_that_stay_past_the_deadline_do_not_hold_the_drain(monkeypatch) -> None:
    out = outputs_for(spec_of(3))
    fake = FakeNode(clients=(1,))
    monkeypatch.setattr(rolling, "ssh", fake)
    monkeypatch.setattr(rolling, "CLIENTS_POLL_S", 0.01)
    took = rolling.wait_for_clients(out, "node-1", deadline_s=0.2)
    assert 0.2 <= took < 5 and len(fake.commands) > 2


def test_a_failed_stop_keeps_the_node_out(monkeypatch) -> None:
    out = outputs_for(spec_of(3))
    monkeypatch.setattr(rolling, "ssh", lambda *a, **k: subprocess.CompletedProcess("x", 1, "", "Unit failed"))
    with pytest.raises(RuntimeError, match="stays out of the balancer"):
        rolling.drain_services(out, "node-3")
    fake = FakeNode()
    monkeypatch.setattr(rolling, "ssh", lambda _o, _n, command, timeout=60: (
        subprocess.CompletedProcess(command, 1, "", "Unit failed") if command.startswith("systemctl")
        else fake(_o, _n, command, timeout)))
    with pytest.raises(RuntimeError, match="could not stop voicestack-agent.service.*stays out of the balancer"):
        rolling.drain_services(out, "node-3")
