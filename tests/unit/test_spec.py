"""The spec derives ports, both firewalls and DNS from one config; a port change flows everywhere."""
from __future__ import annotations

import ipaddress
import json

import pytest

from infra import spec as specmod
from infra.codec import DecodeError
from infra.config import parse
from infra.spec import WORLD, Role, Scope, derive

BASE = {"provider": "hetzner", "domain": "example.com", "adminCidrs": ["198.51.100.7/32"]}


def spec_of(**changes: object):
    return derive(parse({**BASE, **changes}, env="t"))


def rule_set(rules) -> set[tuple]:
    return {(r.protocol, r.start, r.end, r.sources) for r in rules}


def test_single_node_roles_and_no_redis() -> None:
    spec = spec_of()
    assert [n.name for n in spec.nodes] == ["node-1"]
    assert spec.nodes[0].roles == {Role.LIVEKIT, Role.TURN, Role.AGENT}
    assert not spec.has_port("redis")
    assert spec.nodes[0].private_ip is None


def test_cluster_runs_redis_and_sentinel_on_every_node_on_the_private_network() -> None:
    spec = spec_of(nodeCount=3, privateNetwork="10.9.0.0/24")
    assert [n.private_ip for n in spec.nodes] == ["10.9.0.10", "10.9.0.11", "10.9.0.12"]
    assert [n.name for n in spec.nodes_with(Role.REDIS)] == ["node-1", "node-2", "node-3"]
    assert spec.redis_seed_node.name == "node-1" and spec.redis_quorum == 2
    for name, number in (("redis", 6379), ("redis-sentinel", 26379)):
        port = spec.port(name)
        assert port.scope is Scope.PRIVATE and port.role is Role.REDIS and port.start == number
        assert ("tcp", number, number, ("10.9.0.0/24",)) in rule_set(spec.host_firewall)
        assert all(r.start != number for r in spec.cloud_firewall)
        assert port in spec.closed_ports()  # the verify suite probes it from outside


def test_one_node_has_no_redis_nodes_and_no_sentinel_port() -> None:
    spec = spec_of()
    assert spec.redis_nodes == () and spec.redis_seed_node is None
    assert not spec.has_port("redis-sentinel")


def test_a_redis_port_on_the_sentinel_port_is_refused() -> None:
    from infra.config import parse as parse_config
    from infra.spec import port_problems
    problems = port_problems(parse_config({**BASE, "nodeCount": 3, "redisPort": 26379}, env="t"))
    assert any(key == "redisPort" and "redis-sentinel" in msg for key, msg in problems), problems


def test_cloud_firewall_is_exactly_public_ports_plus_admin_ssh() -> None:
    spec = spec_of()
    expected = {(p.protocol, p.start, p.end, WORLD) for p in spec.public_ports()}
    expected.add(("tcp", 22, 22, ("198.51.100.7/32",)))
    assert rule_set(spec.cloud_firewall) == expected
    # The defaults expose what a browser/agent needs and nothing internal.
    labels = {p.label for p in spec.public_ports()}
    assert labels == {"80/tcp", "443/tcp", "7881/tcp", "3478/udp", "3478/tcp", "50000-60000/udp"}
    for closed in ("livekit-http", "livekit-prometheus", "agent-health", "agent-metrics", "turn-relay"):
        assert spec.port(closed).scope in (Scope.LOOPBACK, Scope.PRIVATE)


def test_no_ssh_rule_without_admin_cidrs_and_world_only_by_opt_in() -> None:
    spec = derive(parse({"provider": "local", "domain": "x.test"}, env="x"))
    assert all(r.start != 22 for r in spec.cloud_firewall)
    spec = spec_of(adminCidrs=[], allowWorldSsh=True)
    assert ("tcp", 22, 22, WORLD) in rule_set(spec.cloud_firewall)


@pytest.mark.parametrize(
    "key,value,port_name",
    [("livekitTcpPort", 7991, "livekit-ice-tcp"), ("turnUdpPort", 3479, "turn-udp"),
     ("icePortStart", 51000, "livekit-ice-udp"), ("livekitHttpPort", 7990, "livekit-http")],
    ids=["ice-tcp", "turn-udp", "ice-range", "http"],
)
def test_changing_a_port_changes_every_consumer(key: str, value: int, port_name: str) -> None:
    before, after = spec_of(), spec_of(**{key: value})
    assert after.port(port_name).start == value
    old = before.port(port_name)
    if old.scope is Scope.PUBLIC:
        assert (old.protocol, old.start) in {(r.protocol, r.start) for r in before.cloud_firewall}
        assert (old.protocol, old.start) not in {(r.protocol, r.start) for r in after.cloud_firewall}
        assert (old.protocol, value) in {(r.protocol, r.start) for r in after.cloud_firewall}
        assert (old.protocol, value) in {(r.protocol, r.start) for r in after.host_firewall}
        assert after.port(port_name) in after.public_ports()  # verification expectations
    else:
        assert after.port(port_name) in after.closed_ports()


def test_mux_mode_opens_one_udp_port() -> None:
    spec = spec_of(iceMode="mux", iceUdpPort=7882)
    ice = spec.port("livekit-ice-udp")
    assert (ice.start, ice.end) == (7882, 7882)
    assert ("udp", 7882, 7882, WORLD) in rule_set(spec.cloud_firewall)
    assert all(r.start != 50000 for r in spec.cloud_firewall)


def test_turn_tls_on_443_uses_sni_split_else_own_public_port() -> None:
    spec = spec_of()
    assert spec.sni_split and spec.port("turn-tls").scope is Scope.LOOPBACK
    assert spec.port("https").service == "edge"
    spec = spec_of(turnTlsPort=5349)
    assert not spec.sni_split
    assert spec.port("turn-tls").scope is Scope.PUBLIC and spec.port("https").service == "caddy"
    assert ("tcp", 5349, 5349, WORLD) in rule_set(spec.cloud_firewall)
    assert {(t.protocol, t.port) for t in spec.turn_servers} == {("tls", 5349), ("udp", 3478)}


def test_dns_records_cover_names_and_nodes() -> None:
    one = spec_of()
    assert {(r.name, r.nodes) for r in one.dns_records} == {
        ("livekit.example.com", ("node-1",)), ("turn.example.com", ("node-1",))}
    three = spec_of(nodeCount=3)
    names = {r.name: r.nodes for r in three.dns_records}
    assert names["livekit.example.com"] == ("node-1", "node-2", "node-3")
    # Every TURN node its own TURN name, pointing at it alone; no shared TURN name on one node.
    assert "turn.example.com" not in names
    assert {n: names[f"{n}.turn.example.com"] for n in ("node-1", "node-2", "node-3")} == {
        n: (n,) for n in ("node-1", "node-2", "node-3")}
    assert names["node-2.example.com"] == ("node-2",)
    assert three.dns_records[0].relative_to("example.com") == "livekit"


def test_a_cloud_cluster_puts_the_livekit_name_behind_a_health_checked_balancer() -> None:
    assert spec_of().balancer is None
    three = spec_of(nodeCount=3)
    lb = three.balancer
    assert lb is not None and lb.targets == ("node-1", "node-2", "node-3")
    # TCP passthrough of 443 and 80 to the nodes' PROXY-reading ports, health-checked on its own port.
    assert {(s.listen_port, s.target_port) for s in lb.services} == {
        (three.port("https").start, three.port("lb-https").start), (three.port("http").start, three.port("lb-http").start)}
    assert lb.health.port == three.port("lb-health").start and lb.health.path == specmod.LB_HEALTH_PATH
    for name in ("lb-http", "lb-https", "lb-health"):
        port = three.port(name)
        assert port.scope is Scope.PRIVATE and port.role is Role.LIVEKIT
    net = ipaddress.ip_network(three.config.private_network)
    assert lb.private_ip == str(net.network_address + 5) and lb.private_ip not in {n.private_ip for n in three.nodes}
    # The LiveKit name publishes the balancer's one address; TURN and per-node names stay direct.
    records = {r.name: r for r in three.dns_records}
    assert records["livekit.example.com"].balancer and records["livekit.example.com"].address_count == 1
    assert not records["node-2.turn.example.com"].balancer and not records["node-2.example.com"].balancer
    ip_of = {"node-1": "a", "node-2": "b", "node-3": "c"}
    assert three.dns_addresses(ip_of, "lb")["livekit.example.com"] == ["lb"]
    assert three.dns_addresses(ip_of, "lb")["node-3.example.com"] == ["c"]
    with pytest.raises(ValueError, match="load balancer"):
        three.dns_addresses(ip_of)


def test_bring_your_own_hosts_keep_dns_listing_every_node() -> None:
    hosts = [{"name": f"h{i}", "publicIp": f"203.0.113.{i}", "privateIp": f"10.77.0.{10 + i}"} for i in range(1, 4)]
    spec = spec_of(provider="existing", hosts=hosts, nodeCount=3)
    assert spec.balancer is None and not spec.has_port("lb-health")
    assert spec.dns_records[0].address_count == 3


def test_topology_decides_certificate_and_turn_nodes_once() -> None:
    one, three = spec_of(), spec_of(nodeCount=3)
    assert one.certificate_node == one.nodes[0] and one.turn_host_of(one.nodes[0]) == "turn.example.com"
    assert three.certificate_node == three.node("node-1")
    assert [n.name for n in three.turn_name_nodes()] == ["node-1", "node-2", "node-3"]
    assert three.turn_hosts() == {n: f"{n}.turn.example.com" for n in ("node-1", "node-2", "node-3")}


def test_each_livekit_node_hands_out_its_own_turn_name_only() -> None:
    one, three = spec_of(), spec_of(nodeCount=3)
    assert {(t.host, t.protocol, t.port) for t in one.turn_servers_for(one.nodes[0])} == {
        ("turn.example.com", "tls", 443), ("turn.example.com", "udp", 3478)}
    for node in three.nodes:
        assert {(t.host, t.protocol) for t in three.turn_servers_for(node)} == {
            (f"{node.name}.turn.example.com", "tls"), (f"{node.name}.turn.example.com", "udp")}
    # Every TURN node's servers are in the spec (what the outputs carry), each with its node.
    assert {t.node for t in three.turn_servers} == {"node-1", "node-2", "node-3"} and len(three.turn_servers) == 6


@pytest.mark.parametrize("changes", [{}, {"nodeCount": 3}, {"iceMode": "mux", "turnTlsPort": 5349}],
                         ids=["one-node", "cluster", "mux-own-tls-port"])
def test_the_spec_survives_its_json_form_exactly(changes) -> None:
    """outputs.json carries the derived spec: reading it back must give the same object."""
    spec = spec_of(**changes)
    again = specmod.from_json(json.loads(json.dumps(specmod.to_json(spec))))
    assert again == specmod.without_secrets(spec)
    assert again.port("livekit-ice-udp") == spec.port("livekit-ice-udp") and again.nodes == spec.nodes


def test_a_spec_with_a_wrong_field_type_names_the_field() -> None:
    data = specmod.to_json(spec_of())
    data["ports"][0]["start"] = "22"
    with pytest.raises(DecodeError, match=r"spec.ports\[0\].start"):
        specmod.from_json(data)


def test_node_to_node_flows_cover_every_private_port_and_livekit_media() -> None:
    """What a cloud firewall that filters traffic between servers (DigitalOcean) must let through."""
    assert spec_of().node_firewall == ()  # one node: nothing between nodes
    spec = spec_of(nodeCount=3)
    flows = {(r.protocol, r.start, r.end) for r in spec.node_firewall}
    private = {(p.protocol, p.start, p.end) for p in spec.ports if p.scope is Scope.PRIVATE}
    assert private and private <= flows
    assert {("tcp", 6379, 6379), ("udp", 40000, 49999), ("udp", 50000, 60000)} <= flows
    assert all(r.sources == () for r in spec.node_firewall)  # the nodes themselves, named by the provider
    # Hetzner's cloud firewall ignores private networks: the flows never become address rules there.
    assert all(r.start != 6379 for r in spec.cloud_firewall)


def test_cloud_nodes_are_direct_and_the_spec_carries_the_model_through_json() -> None:
    spec = spec_of(nodeCount=2)
    assert {n.network for n in spec.nodes} == {"direct"} and not spec.udp_blocked
    local = derive(parse({"provider": "local", "domain": "x.test", "network": "nat", "blockUdp": True}, env="x"))
    again = specmod.from_json(json.loads(json.dumps(specmod.to_json(local))))
    assert again.nodes[0].network == "nat" and again.udp_blocked
