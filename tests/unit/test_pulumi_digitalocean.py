"""The DigitalOcean program under Pulumi mocks: what it would create, checked against the spec."""
from __future__ import annotations

import ipaddress
from collections import defaultdict

import pytest
import yaml

from infra.config import ConfigError
from infra.spec import WORLD

from . import pulumi_harness as harness
from .pulumi_harness import ADMIN, SSH_KEY, assert_same, expected_rules, run_stack, spec_for

FIREWALL, DROPLET = "digitalocean:index/firewall:Firewall", "digitalocean:index/droplet:Droplet"
RECORD, RESERVED = "digitalocean:index/dnsRecord:DnsRecord", "digitalocean:index/reservedIp:ReservedIp"

SINGLE = {"provider": "digitalocean", "domain": "example.org", "adminCidrs": [ADMIN, "2001:db8::/48"],
          "sshPublicKey": SSH_KEY}
CLUSTER = {**SINGLE, "nodeCount": 3, "region": "ams3", "serverType": "s-4vcpu-8gb"}
SHAPES = {"single": SINGLE, "cluster": CLUSTER}


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def shape(request):
    config = SHAPES[request.param]
    return spec_for(config), run_stack(config)


LB = "digitalocean:index/loadBalancer:LoadBalancer"


def main_firewall(run):
    """The environment's firewall (a cluster also has its load balancer's, named <env>-lb)."""
    found = [f for f in run.of(FIREWALL) if not f.inputs["name"].endswith("-lb")]
    assert len(found) == 1, [f.inputs["name"] for f in run.of(FIREWALL)]
    return found[0]


def inbound(run) -> list[tuple]:
    """Rules open to addresses (the internet, the admin CIDRs)."""
    return [(r["protocol"], r["portRange"], tuple(r["sourceAddresses"]))
            for r in main_firewall(run).inputs["inboundRules"] if r.get("sourceAddresses")]


def node_to_node(run) -> list[tuple]:
    """Rules open only to droplets by tag: (protocol, port range, tags)."""
    return [(r["protocol"], r["portRange"], tuple(r["sourceTags"]))
            for r in main_firewall(run).inputs["inboundRules"] if not r.get("sourceAddresses")]


def droplet_ips(run) -> dict[str, str]:
    """node name -> the droplet's own public address (its name is <stack>-<node>)."""
    return {d.inputs["name"].removeprefix(f"{harness.STACK}-"): d.state["ipv4Address"] for d in run.of(DROPLET)}


def reserved_ips(run) -> list[str]:
    return [r.state["ipAddress"] for r in run.of(RESERVED)]


def reserved_ip_of(spec, run) -> dict[str, str]:
    """node name -> its reserved IP (the resource is <component>-<node>-ip). Registration order
    is not node order: the mock registers resources as their inputs resolve."""
    return {n.name: next(r.state["ipAddress"] for r in run.of(RESERVED) if r.name.endswith(f"-{n.name}-ip"))
            for n in spec.nodes}


def records(run) -> dict[tuple[str, str], list[str]]:
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in run.of(RECORD):
        grouped[(r.inputs["name"], r.inputs["type"])].append(r.inputs["value"])
    return dict(grouped)


def test_inbound_rules_equal_the_spec_cloud_firewall(shape):
    spec, run = shape
    assert_same(expected_rules(spec), inbound(run), "inbound rules")


def expected_node_rules(spec, run) -> list[tuple]:
    tag = run.one("digitalocean:index/tag:Tag").inputs["name"]
    return [(r.protocol, r.port_range, (tag,)) for r in spec.node_firewall]


def test_node_to_node_rules_equal_the_spec_node_firewall_by_the_env_tag(shape):
    """DigitalOcean's firewall filters VPC traffic too: every flow between nodes has a rule."""
    spec, run = shape
    assert_same(expected_node_rules(spec, run), node_to_node(run), "node-to-node rules")
    assert bool(spec.node_firewall) == spec.multi_node


def test_cluster_nodes_reach_redis_the_relay_range_and_livekit_media_of_each_other():
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    allowed = {(proto, ports) for proto, ports, _tags in node_to_node(run)}
    for name in ("redis", "turn-relay", "livekit-ice-udp", "livekit-http"):
        port = spec.port(name)
        assert (port.protocol, str(port.start) if port.start == port.end else f"{port.start}-{port.end}") in allowed, name


def test_outbound_allows_all_egress_because_digitalocean_denies_it_otherwise(shape):
    _, run = shape
    outbound = {(r["protocol"], r.get("portRange"), tuple(r["destinationAddresses"]))
                for r in main_firewall(run).inputs["outboundRules"]}
    assert outbound == {("tcp", "1-65535", WORLD), ("udp", "1-65535", WORLD), ("icmp", None, WORLD)}


def test_firewall_covers_every_droplet_by_tag_from_creation(shape):
    spec, run = shape
    tag = run.one("digitalocean:index/tag:Tag").inputs["name"]
    assert main_firewall(run).inputs["tags"] == [tag]
    droplets = run.of(DROPLET)
    assert len(droplets) == len(spec.nodes) and all(d.inputs["tags"] == [tag] for d in droplets)


def balancer_ip(run) -> str | None:
    found = run.of(LB)
    return found[0].state["ip"] if found else None


def test_the_livekit_name_points_at_the_reserved_ip_or_the_balancer_every_other_name_at_the_droplets(shape):
    spec, run = shape
    domain = run.one("digitalocean:index/domain:Domain")
    assert domain.inputs["name"] == "example.org"
    assert {r.inputs["domain"] for r in run.of(RECORD)} == {domain.id}
    expected = harness.expected_dns(spec, droplet_ips(run), balancer_ip(run))
    livekit = spec.config.livekit_host.removesuffix(".example.org")
    if spec.balancer is None:
        expected[(livekit, "A")] = sorted(reserved_ips(run))
    harness.assert_same_dns(expected, records(run))
    # The outputs say what was published, for the verify suite's DNS check.
    livekit_nodes = next(r.nodes for r in spec.dns_records if r.name == spec.config.livekit_host)
    assert run.outputs["dns"][spec.config.livekit_host] == (
        [balancer_ip(run)] if spec.balancer else [reserved_ip_of(spec, run)[n] for n in livekit_nodes])
    for node, turn_host in spec.turn_hosts().items():   # every TURN node's own name, its droplet's address
        assert run.outputs["dns"][turn_host] == [droplet_ips(run)[node]]


def test_a_cluster_needs_no_reserved_ips_behind_its_balancer():
    run = run_stack(CLUSTER)
    assert not run.of(RESERVED) and not run.of("digitalocean:index/reservedIpAssignment:ReservedIpAssignment")


def test_a_single_droplet_has_no_load_balancer():
    run = run_stack(SINGLE)
    assert not run.of(LB) and len(run.of(FIREWALL)) == 1


def check_balancer(spec, run) -> None:
    lb = run.one(LB)
    vpc = run.one("digitalocean:index/vpc:Vpc")
    assert lb.inputs["region"] == spec.config.region and lb.inputs["vpcUuid"] == vpc.id
    ids = {d.inputs["name"].removeprefix(f"{harness.STACK}-"): int(d.id) for d in run.of(DROPLET)}
    assert_same([ids[n] for n in spec.balancer.targets], [int(i) for i in lb.inputs["dropletIds"]], "targets")
    assert_same([("tcp", s.listen_port, "tcp", s.target_port) for s in spec.balancer.services],
                [(r["entryProtocol"], r["entryPort"], r["targetProtocol"], r["targetPort"])
                 for r in lb.inputs["forwardingRules"]], "forwarding rules")
    assert lb.inputs["enableProxyProtocol"] is True, "the nodes' balancer ports expect a PROXY header"
    hc = spec.balancer.health
    assert lb.inputs.get("healthcheck") == {
        "protocol": "http", "port": hc.port, "path": hc.path, "checkIntervalSeconds": hc.interval_s,
        "responseTimeoutSeconds": hc.timeout_s, "unhealthyThreshold": hc.retries, "healthyThreshold": hc.retries}
    # DigitalOcean's documented bounds: interval and timeout 3-300 s, thresholds 2-10.
    assert 3 <= hc.interval_s <= 300 and 3 <= hc.timeout_s <= 300 and 2 <= hc.retries <= 10
    # Only this balancer reaches the droplets' balancer ports and the health check.
    lb_fw = next(f for f in run.of(FIREWALL) if f.inputs["name"].endswith("-lb"))
    assert lb_fw.inputs["tags"] == main_firewall(run).inputs["tags"]
    want = sorted({str(s.target_port) for s in spec.balancer.services} | {str(hc.port)})
    assert sorted(r["portRange"] for r in lb_fw.inputs["inboundRules"]) == want
    assert all(r["sourceLoadBalancerUids"] == [lb.id] and r["protocol"] == "tcp"
               for r in lb_fw.inputs["inboundRules"])


def test_a_cluster_has_a_health_checked_load_balancer_in_its_vpc():
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    check_balancer(spec, run)
    assert run.outputs["balancer_ip"] == balancer_ip(run)


def test_a_load_balancer_without_its_health_check_fails_the_check(monkeypatch):
    """The check above is strict: the same program with no health check fails it."""
    from infra.cloud import digitalocean

    real = digitalocean.do.LoadBalancer

    def unchecked(resource_name, **kwargs):
        kwargs.pop("healthcheck")
        return real(resource_name, **kwargs)

    monkeypatch.setattr(digitalocean.do, "LoadBalancer", unchecked)
    with pytest.raises(AssertionError):
        check_balancer(spec_for(CLUSTER), run_stack(CLUSTER))


def test_a_single_droplet_gets_a_reserved_ip():
    run = run_stack(SINGLE)
    droplet_ids = {int(d.id) for d in run.of(DROPLET)}
    assignments = run.of("digitalocean:index/reservedIpAssignment:ReservedIpAssignment")
    assert {int(a.inputs["dropletId"]) for a in assignments} == droplet_ids
    assert sorted(a.inputs["ipAddress"] for a in assignments) == sorted(reserved_ips(run))


def test_droplets_are_debian_12_in_the_configured_region(shape):
    spec, run = shape
    for d in run.of(DROPLET):
        assert (d.inputs["image"], d.inputs["size"], d.inputs["region"]) == \
            ("debian-12-x64", spec.config.server_type, spec.config.region)
        assert d.inputs["sshKeys"] == [run.one("digitalocean:index/sshKey:SshKey").state["fingerprint"]]


def test_project_holds_droplets_reserved_ips_the_balancer_and_domain(shape):
    _, run = shape
    held = set(run.one("digitalocean:index/project:Project").inputs["resources"])
    assert held == {d.state["dropletUrn"] for d in run.of(DROPLET)} | \
        {r.state["reservedIpUrn"] for r in run.of(RESERVED)} | {r.state["loadBalancerUrn"] for r in run.of(LB)} | \
        {"do:domain:example.org"}


def test_cluster_droplets_share_a_vpc_on_the_private_network():
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    vpc = run.one("digitalocean:index/vpc:Vpc")
    assert vpc.inputs["ipRange"] == spec.config.private_network and vpc.inputs["region"] == "ams3"
    assert {d.inputs["vpcUuid"] for d in run.of(DROPLET)} == {vpc.id}
    private = [n["private_ip"] for n in run.outputs["nodes"]]
    assert sorted(private) == sorted(d.state["ipv4AddressPrivate"] for d in run.of(DROPLET))
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(spec.config.private_network) for ip in private)


def test_single_droplet_has_no_vpc_and_no_private_ip():
    run = run_stack(SINGLE)
    assert not run.of("digitalocean:index/vpc:Vpc") and "vpcUuid" not in run.one(DROPLET).inputs
    assert run.outputs["nodes"][0]["private_ip"] is None


def test_ssh_is_open_only_to_admin_cidrs(shape):
    _, run = shape
    assert [r for r in inbound(run) if r[1] == "22"] == [("tcp", "22", (ADMIN, "2001:db8::/48"))]


def test_ssh_is_world_open_only_with_allow_world_ssh():
    run = run_stack({**SINGLE, "adminCidrs": [], "allowWorldSsh": True})
    assert [r for r in inbound(run) if r[1] == "22"] == [("tcp", "22", WORLD)]


def test_secrets_are_secret_outputs_and_stay_out_of_user_data(shape):
    _, run = shape
    values = [run.outputs[k] for k in ("api_secret", "turn_secret", "token_key")]
    assert all(run.secret[k] for k in ("api_secret", "turn_secret", "token_key"))
    for d in run.of(DROPLET):
        assert yaml.safe_load(d.inputs["userData"])["ssh_authorized_keys"] == [SSH_KEY]
        assert not [v for v in values if v in d.inputs["userData"]]


def test_media_turn_and_ssh_use_the_droplets_own_address_on_its_interface(shape):
    """The direct model: the droplet's public IP is on eth0; the reserved IP is no node address."""
    _, run = shape
    assert run.ip_of() == droplet_ips(run)
    assert all(n["network"] == "direct" and n["interface_ip"] == n["public_ip"] for n in run.outputs["nodes"])
    assert not set(run.ip_of().values()) & set(reserved_ips(run))


def test_nat_is_refused_for_digitalocean_with_the_reason():
    with pytest.raises(ConfigError) as err:
        run_stack({**SINGLE, "network": "nat"})
    assert [k for k, _ in err.value.problems] == ["network"]
    assert "eth0" in err.value.problems[0][1]
    assert harness.LAST["mocks"].registered == []


def test_invalid_config_creates_nothing():
    with pytest.raises(ConfigError):
        run_stack({**SINGLE, "region": "nbg1"})
    assert harness.LAST["mocks"].registered == []


#: Both rule sets of the one firewall: (what the spec asks for, what the program declared).
RULE_SETS = {"inbound rules": (lambda spec, _run: expected_rules(spec), inbound),
             "node-to-node rules": (expected_node_rules, node_to_node)}
MISSING_CASES = [(what, i) for what, n in (("inbound rules", len(spec_for(CLUSTER).cloud_firewall)),
                                           ("node-to-node rules", len(spec_for(CLUSTER).node_firewall)))
                 for i in range(n)]


@pytest.mark.parametrize(("what", "index"), MISSING_CASES, ids=[f"{w.split()[0]}-{i}" for w, i in MISSING_CASES])
def test_rule_comparison_fails_when_any_rule_is_missing(what, index):
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    expected, declared = RULE_SETS[what]
    actual = declared(run)
    del actual[index]
    with pytest.raises(AssertionError, match="missing"):
        assert_same(expected(spec, run), actual, what)


@pytest.mark.parametrize("index", range(len(spec_for(CLUSTER).dns_records)))
def test_dns_comparison_fails_when_any_record_is_missing(index):
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    expected = harness.expected_dns(spec, run.ip_of(), balancer_ip(run))
    del expected[list(expected)[index]]
    with pytest.raises(AssertionError, match="unexpected"):
        harness.assert_same_dns(expected, records(run))
