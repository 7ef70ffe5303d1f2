"""Three nodes behind the emulated 1:1 NAT: the cluster path where TURN and the room are on different nodes.

The package's three-node cluster (tests/e2e/cluster/conftest.py: `e2ecluster`, `network: nat`, Redis
and a Sentinel on every node), provisioned and deployed once. The unchanged verify suite must pass. Then a call is forced
across nodes: the room is created on node-2 or node-3 (CreateRoom with the node's id, read
from the node's own Prometheus metrics; the node's webhook log confirms it hosts the room),
and the client may only use relay candidates of one TURN server, turn.<domain> on 443 over
TLS, which is node-1. Its audio therefore flows client -> coturn on node-1 -> LiveKit on the
room's node, to that node's public address (hairpin NAT in the emulated cloud), and back.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from infra import outputs
from infra.probes.roundtrip import round_trips, turn_tls
from tests.e2e import envs, network

ENV = envs.CLUSTER_ENV
NODES = envs.CLUSTER_NODES
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(nat_cluster):
    return nat_cluster


def test_01_every_node_binds_its_interface_and_advertises_its_public_address(env) -> None:
    out = outputs.read(ENV)
    for node in out.nodes:
        lines = network.rendered_lines(ENV, node.name)
        print(json.dumps({"model": "nat", "node": node.name, "public_ip": node.public_ip,
                          "interface_ip": node.interface_ip, "private_ip": node.private_ip, **lines}, indent=2))
        assert f"node_ip: {node.public_ip}" in lines["livekit.yaml"]
        assert f"- {node.interface_ip}/32" in lines["livekit.yaml"]
        turn = lines["turnserver.conf"]
        # The relay sends to the other nodes' public addresses, so it is the node's own interface
        # address (NATed to its public one), never the private network's.
        assert f"relay-ip={node.interface_ip}" in turn and f"external-ip={node.public_ip}/{node.interface_ip}" in turn
        assert {f"allowed-peer-ip={n.public_ip}" for n in out.nodes} <= set(turn)
        # Each node hands out its own TURN name only: losing another node takes none of its TURN.
        assert network.turn_server_hosts(ENV, node.name) == {f"{node.name}.{out.spec.config.turn_host}"}


def test_02_the_verify_suite_passes_unchanged(env) -> None:
    proc = network.verify(ENV)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    print("ICE the client saw (nat, three nodes):\n" +
          json.dumps(json.loads(outputs.EnvPaths(ENV).verify_results.read_text())["round_trips"], indent=2))


def test_03_turn_on_node_1_carries_a_call_to_a_room_on_another_node(env) -> None:
    out = outputs.read(ENV)
    spec = out.spec
    turn_node = spec.turn_name_nodes()[0]
    turn_host = spec.turn_host_of(turn_node)
    assert turn_node.name == "node-1" and turn_host == f"node-1.{spec.config.turn_host}"
    room_node = out.nodes[1 + secrets.randbelow(NODES - 1)]  # node-2 or node-3
    prometheus = spec.port("livekit-prometheus").start
    room = f"xnode-{secrets.token_hex(4)}"
    network.create_room(out, room, network.node_id(ENV, room_node.name, prometheus))
    # The node side says where the room lives: its own LiveKit reported room_started to it.
    hosts = {n.name: room in network.rooms_started(ENV, n.name) for n in out.nodes}
    assert hosts == {n.name: n.name == room_node.name for n in out.nodes}, hosts

    # Relay-only ICE with one TURN server: the TURN name over TLS on 443 (agent/tls_tunnel.py does
    # the TLS: the SDK's libwebrtc trusts only its compiled-in roots).
    (result,) = round_trips(out, 1, rooms=[room], collect_ice=True, turn_tls=turn_tls(out, "xnode", "node-1"))
    print(f"cross-node call: room {room} on {room_node.name} ({room_node.public_ip}), TURN/TLS "
          f"{turn_host}:{spec.config.turn_tls_port} on {turn_node.name} "
          f"({out.node('node-1').public_ip}):\n{json.dumps(result, indent=2)}")
    assert result["ok"], f"no spoken round trip across nodes: {result.get('error')}"
    assert result["turn_tls_connections"], "the client never connected to the TURN name over TLS"
    assert "turned on the lights" in result["answer"].lower(), result["answer"]
    relay = out.node("node-1").public_ip
    for pc, seen in result["ice"].items():
        selected = seen["selected"]
        # Another node than the TURN node hosts the room: coturn's relay reaches it through the NAT,
        # so LiveKit answers the relay's public address and the pair is the relay candidate itself.
        assert selected["local"]["type"] == "relay" and selected["local"]["address"] == relay, (pc, selected)
        assert selected["local"].get("relay_protocol") == "tcp", (pc, selected)  # TCP to the tunnel, TLS beyond
        assert selected["remote"]["address"] == room_node.public_ip, (pc, selected)
        assert {c["address"] for c in seen["remote"]} == {room_node.public_ip}, (pc, seen["remote"])
