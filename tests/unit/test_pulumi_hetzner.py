"""The Hetzner program under Pulumi mocks: what it would create, checked against the spec."""
from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from pulumi.runtime import rpc

import infra.__main__ as program_main
from infra import spec as specmod
from infra.cloud import stack_outputs
from infra.cloud.components import SKIP_CHAINED_DEPLOY_ENV
from infra.config import ConfigError
from infra.spec import WORLD

from . import pulumi_harness as harness
from .pulumi_harness import ADMIN, SSH_KEY, assert_same, expected_rules, run_stack, spec_for

FIREWALL, SERVER = "hcloud:index/firewall:Firewall", "hcloud:index/server:Server"
RRSET, PRIMARY_IP = "hcloud:index/zoneRrset:ZoneRrset", "hcloud:index/primaryIp:PrimaryIp"
LB, LB_NETWORK = "hcloud:index/loadBalancer:LoadBalancer", "hcloud:index/loadBalancerNetwork:LoadBalancerNetwork"
LB_SERVICE, LB_TARGET = "hcloud:index/loadBalancerService:LoadBalancerService", "hcloud:index/loadBalancerTarget:LoadBalancerTarget"

SINGLE = {"provider": "hetzner", "domain": "example.com", "adminCidrs": [ADMIN], "sshPublicKey": SSH_KEY}
CLUSTER = {**SINGLE, "nodeCount": 3, "region": "fsn1", "serverType": "cpx31", "privateNetwork": "10.9.0.0/24"}
GIVEN_SECRETS = {"apiSecret": "a" * 40 + "given-api", "turnSecret": "t" * 40 + "given-turn", "tokenKey": "k" * 30,
                 "callPassword": "c" * 20 + "given-call"}
SHAPES = {"single": SINGLE, "cluster": CLUSTER}


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def shape(request):
    config = SHAPES[request.param]
    return config, spec_for(config), run_stack(config)


def actual_rules(run) -> list[tuple]:
    rules = run.one(FIREWALL).inputs["rules"]
    assert {r["direction"] for r in rules} == {"in"}
    return [(r["protocol"], r["port"], tuple(r["sourceIps"])) for r in rules]


def actual_dns(run) -> dict[tuple[str, str], list[str]]:
    return {(r.inputs["name"], r.inputs["type"]): [v["value"] for v in r.inputs["records"]] for r in run.of(RRSET)}


def test_firewall_rules_equal_the_spec_cloud_firewall(shape):
    _, spec, run = shape
    assert_same(expected_rules(spec), actual_rules(run), "firewall rules")


def test_every_server_has_the_firewall_attached_at_creation(shape):
    _, spec, run = shape
    firewall_id = int(run.one(FIREWALL).id)
    servers = run.of(SERVER)
    assert len(servers) == len(spec.nodes)
    assert all(s.inputs["firewallIds"] == [firewall_id] for s in servers)


def balancer_ip(run) -> str | None:
    found = run.of(LB)
    return found[0].state["ipv4"] if found else None


def test_dns_records_point_at_the_right_nodes(shape):
    config, spec, run = shape
    assert {r.inputs["zone"] for r in run.of(RRSET)} == {config["domain"]}
    harness.assert_same_dns(harness.expected_dns(spec, run.ip_of(), balancer_ip(run)), actual_dns(run))


def test_a_single_server_has_no_load_balancer():
    run = run_stack(SINGLE)
    assert not run.of(LB) and not run.of(LB_SERVICE) and not run.of(LB_TARGET)


def health_check_of(spec) -> dict:
    """What Hetzner's health check must be, derived from the spec's (camelCase, as the provider takes it)."""
    hc = spec.balancer.health
    return {"protocol": "http", "port": hc.port, "interval": hc.interval_s, "timeout": hc.timeout_s,
            "retries": hc.retries, "http": {"path": hc.path, "statusCodes": ["200"]}}


def check_balancer(spec, run) -> None:
    lb = run.one(LB)
    assert lb.inputs["loadBalancerType"] == "lb11" and lb.inputs["location"] == spec.config.region
    attached = run.one(LB_NETWORK)
    assert int(attached.inputs["loadBalancerId"]) == int(lb.id)
    assert int(attached.inputs["networkId"]) == int(run.one("hcloud:index/network:Network").id)
    assert attached.inputs["ip"] == spec.balancer.private_ip
    services = run.of(LB_SERVICE)
    assert_same([(s.listen_port, s.target_port) for s in spec.balancer.services],
                [(s.inputs["listenPort"], s.inputs["destinationPort"]) for s in services], "balancer services")
    for svc in services:
        assert svc.inputs["loadBalancerId"] == lb.id and svc.inputs["protocol"] == "tcp"
        assert svc.inputs["proxyprotocol"] is True, "the nodes' balancer ports expect a PROXY v2 header"
        assert svc.inputs.get("healthCheck") == health_check_of(spec), svc.inputs.get("healthCheck")
    server_ids = {s.inputs["labels"]["voicestack-node"]: int(s.id) for s in run.of(SERVER)}
    targets = run.of(LB_TARGET)
    assert_same([server_ids[n] for n in spec.balancer.targets], [int(t.inputs["serverId"]) for t in targets],
                "balancer targets")
    assert all(t.inputs["type"] == "server" and t.inputs["usePrivateIp"] is True
               and int(t.inputs["loadBalancerId"]) == int(lb.id) for t in targets)


def test_a_cluster_has_a_health_checked_load_balancer_on_the_private_network():
    check_balancer(spec_for(CLUSTER), run_stack(CLUSTER))


def test_a_load_balancer_without_its_health_check_fails_the_check(monkeypatch):
    """The check above is strict: the same program with no health check on its services fails it."""
    from infra.cloud import hetzner

    real = hetzner.hcloud.LoadBalancerService

    def unchecked(resource_name, **kwargs):
        kwargs.pop("health_check")
        return real(resource_name, **kwargs)

    monkeypatch.setattr(hetzner.hcloud, "LoadBalancerService", unchecked)
    with pytest.raises(AssertionError, match="healthCheck|None"):
        check_balancer(spec_for(CLUSTER), run_stack(CLUSTER))


def test_balancer_targets_join_only_after_the_balancer_is_on_the_network(monkeypatch):
    """Hetzner refuses a private-IP target until the balancer is attached to the targets' network,
    and the attachment needs the subnet: the program must order both (the mocks see no edges)."""
    from infra.cloud import hetzner

    seen: dict[str, list] = {}

    def recording(cls_name):
        real = getattr(hetzner.hcloud, cls_name)

        def make(resource_name, opts=None, **kwargs):
            resource = real(resource_name, opts=opts, **kwargs)
            seen.setdefault(cls_name, []).append((resource, list(opts.depends_on or []) if opts else []))
            return resource
        return make

    for cls_name in ("NetworkSubnet", "LoadBalancerNetwork", "LoadBalancerTarget"):
        monkeypatch.setattr(hetzner.hcloud, cls_name, recording(cls_name))
    spec = spec_for(CLUSTER)
    run_stack(CLUSTER)
    [(subnet, _)] = seen["NetworkSubnet"]
    [(attached, attached_after)] = seen["LoadBalancerNetwork"]
    assert subnet in attached_after
    assert len(seen["LoadBalancerTarget"]) == len(spec.balancer.targets)
    assert all(attached in after for _target, after in seen["LoadBalancerTarget"])


def test_a_balanced_name_without_the_balancer_address_is_refused():
    """A provider that forgot to publish its balancer must fail at preview, not list the nodes."""
    from infra.cloud.components import NodeAddresses, dns_targets

    spec = spec_for(CLUSTER)
    nodes = [NodeAddresses(node=n, public_ip=f"203.0.113.{n.index + 1}", private_ip=n.private_ip) for n in spec.nodes]
    with pytest.raises(ValueError, match=spec.config.livekit_host):
        dns_targets(spec, nodes, {})
    assert dns_targets(spec_for(SINGLE), nodes[:1], {})  # no balancer: the node's address is enough


def test_stack_outputs_carry_the_balancer_address_only_for_a_cluster(shape):
    config, spec, run = shape
    if spec.balancer is None:
        assert "balancer_ip" not in run.outputs
        return
    assert run.outputs["balancer_ip"] == balancer_ip(run) == run.outputs["dns"][spec.config.livekit_host][0]
    # A stack without its dns output still assembles: the balanced name from balancer_ip.
    without_dns = {k: v for k, v in run.outputs.items() if k != "dns"}
    out = stack_outputs.to_outputs(without_dns, "/keys/deploy")
    assert out.dns == spec.dns_addresses(run.ip_of(), balancer_ip(run))


def test_stack_outputs_refuse_a_balanced_name_published_elsewhere():
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    dns = {**run.outputs["dns"], spec.config.livekit_host: [run.ip_of()["node-1"]]}
    with pytest.raises(stack_outputs.StackOutputsError, match="load balancer"):
        stack_outputs.to_outputs({**run.outputs, "dns": dns}, "/keys/deploy")


def test_servers_keep_primary_ips_that_outlive_them(shape):
    _, spec, run = shape
    ips = {r.id: r for r in run.of(PRIMARY_IP)}
    assert len(ips) == len(spec.nodes)
    assert all(ip.inputs["autoDelete"] is False and ip.inputs["type"] == "ipv4" for ip in ips.values())
    for server in run.of(SERVER):
        net = server.inputs["publicNets"][0]
        assert str(int(net["ipv4"])) in ips and net["ipv4Enabled"] is True
    assert sorted(run.ip_of().values()) == sorted(ip.state["ipAddress"] for ip in ips.values())


def test_servers_are_debian_12_with_the_configured_type_and_location(shape):
    config, spec, run = shape
    for server in run.of(SERVER):
        assert server.inputs["image"] == "debian-12"
        assert server.inputs["serverType"] == spec.config.server_type
        assert server.inputs["location"] == spec.config.region
        assert server.inputs["labels"]["voicestack-env"] == "voicestack-test"


def test_cluster_nodes_sit_on_the_private_network_at_their_spec_addresses():
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    network = run.one("hcloud:index/network:Network")
    subnet = run.one("hcloud:index/networkSubnet:NetworkSubnet")
    assert network.inputs["ipRange"] == "10.9.0.0/24" == subnet.inputs["ipRange"]
    assert int(subnet.inputs["networkId"]) == int(network.id) and subnet.inputs["networkZone"] == "eu-central"
    by_name = {s.inputs["labels"]["voicestack-node"]: s for s in run.of(SERVER)}
    for node in spec.nodes:
        nets = by_name[node.name].inputs["networks"]
        assert [(int(n["networkId"]), n["ip"]) for n in nets] == [(int(network.id), node.private_ip)]
    assert {n["name"]: n["private_ip"] for n in run.outputs["nodes"]} == {n.name: n.private_ip for n in spec.nodes}
    assert [n["name"] for n in run.outputs["nodes"] if "redis" in n["roles"]] == [n.name for n in spec.redis_nodes]


def test_single_node_has_no_private_network():
    run = run_stack(SINGLE)
    assert not run.of("hcloud:index/network:Network") and "networks" not in run.one(SERVER).inputs
    assert run.outputs["nodes"][0]["private_ip"] is None


def test_ssh_is_open_only_to_admin_cidrs(shape):
    _, _, run = shape
    ssh = [r for r in actual_rules(run) if r[1] == "22"]
    assert ssh == [("tcp", "22", (ADMIN,))]
    assert all(not set(WORLD) & set(r[2]) for r in actual_rules(run) if r[1] == "22")


def test_ssh_is_world_open_only_with_allow_world_ssh():
    run = run_stack({**SINGLE, "adminCidrs": [], "allowWorldSsh": True})
    assert [r for r in actual_rules(run) if r[1] == "22"] == [("tcp", "22", WORLD)]


def test_secrets_are_secret_outputs_and_generated_once(shape):
    _, _, run = shape
    for key in ("api_secret", "turn_secret", "token_key", "call_password"):
        assert run.secret[key] is True, key
        assert len(run.outputs[key]) >= 48 and run.outputs[key].isalnum()
    assert run.secret["spec"] is False and run.secret["nodes"] is False
    passwords = run.of("random:index/randomPassword:RandomPassword")
    assert len(passwords) == 4
    assert all(int(p.inputs["length"]) >= 48 and p.inputs["special"] is False for p in passwords)


def test_given_secrets_are_used_and_stay_secret():
    run = run_stack({**SINGLE, **GIVEN_SECRETS}, secret_keys=GIVEN_SECRETS)
    assert not run.of("random:index/randomPassword:RandomPassword")
    assert (run.outputs["api_secret"], run.outputs["turn_secret"], run.outputs["token_key"],
            run.outputs["call_password"]) == \
        (GIVEN_SECRETS["apiSecret"], GIVEN_SECRETS["turnSecret"], GIVEN_SECRETS["tokenKey"],
         GIVEN_SECRETS["callPassword"])
    assert all(run.secret[k] for k in ("api_secret", "turn_secret", "token_key", "call_password"))


def test_user_data_is_cloud_config_without_secrets():
    run = run_stack({**CLUSTER, **GIVEN_SECRETS}, secret_keys=GIVEN_SECRETS)
    secrets = list(GIVEN_SECRETS.values())
    for server in run.of(SERVER):
        user_data = server.inputs["userData"]
        assert user_data.startswith("#cloud-config\n")
        doc = yaml.safe_load(user_data)
        assert doc["ssh_authorized_keys"] == [SSH_KEY] and doc["package_update"] is False
        assert doc["hostname"] == server.inputs["labels"]["voicestack-node"]
        assert not [s for s in secrets if s in user_data]


def test_generated_secrets_stay_out_of_user_data(shape):
    _, _, run = shape
    generated = [run.outputs[k] for k in ("api_secret", "turn_secret", "token_key", "call_password")]
    assert all(s not in server.inputs["userData"] for server in run.of(SERVER) for s in generated)


def test_stack_outputs_assemble_into_the_outputs_contract(shape):
    """What the program exports is exactly what outputs.json is assembled from (the same spec)."""
    _, spec, run = shape
    out = stack_outputs.to_outputs(run.outputs, "/keys/deploy")
    assert out.spec == specmod.without_secrets(spec)
    assert out.livekit_url == "wss://livekit.example.com" and out.token_endpoint == "https://livekit.example.com/api/token"
    turn = "turn.example.com" if len(spec.nodes) == 1 else "node-1.turn.example.com"
    assert out.turn_domain == turn and out.provider == "hetzner"
    assert [n.name for n in out.nodes] == [n.name for n in spec.nodes]
    assert {n.name: n.public_ip for n in out.nodes} == run.ip_of()
    assert out.api_secret == run.outputs["api_secret"] and out.spec.cloud_firewall_managed
    assert run.outputs["info"]["dns_nameservers"] == ["hydrogen.ns.hetzner.com", "oxygen.ns.hetzner.com"]
    # Primary IPs sit on the servers' interfaces: the direct model, and DNS publishes exactly them.
    assert all(n.network == "direct" and n.interface_ip == n.public_ip for n in out.nodes)
    assert out.dns == spec.dns_addresses(run.ip_of(), balancer_ip(run))
    assert out.balancer_ip == balancer_ip(run)


def test_no_deploy_runs_inside_pulumi_up_by_default(shape):
    _, _, run = shape
    assert not run.of("command:local:Command")


def test_deploy_on_up_runs_after_the_servers_with_their_ids_as_triggers(shape):
    config, spec, _ = shape
    run = run_stack({**config, "deployOnUp": True})
    cmd = run.one("command:local:Command")
    assert "-m infra.cloud.stack_outputs --from-env && " in cmd.inputs["create"]
    assert cmd.inputs["create"].endswith("-m deploy --env test")
    server_ids = sorted(s.id for s in run.of(SERVER))
    assert sorted(cmd.inputs["triggers"][:-1]) == server_ids and len(cmd.inputs["triggers"][-1]) == 64
    environment = cmd.inputs["environment"]
    assert environment[rpc._special_sig_key] == rpc._special_secret_sig  # the whole environment is a secret
    assert json.loads(environment["value"]["VOICESTACK_OUTPUTS"]) == run.outputs


def test_make_up_never_chains_a_second_deploy(monkeypatch):
    monkeypatch.setenv(SKIP_CHAINED_DEPLOY_ENV, "1")
    run = run_stack({**SINGLE, "deployOnUp": True})
    assert not run.of("command:local:Command") and run.of(SERVER)


def test_deploy_trigger_changes_with_the_spec():
    from infra.cloud.components import deploy_digest

    assert deploy_digest(spec_for(SINGLE)) != deploy_digest(spec_for({**SINGLE, "icePortEnd": 59999}))


@pytest.mark.parametrize("bad", [
    {"region": "mars1"}, {"adminCidrs": []}, {"sshPublicKey": ""}, {"apiSecret": "short"},
    {"livekitHost": "livekit.other.org"}, {"nodeCount": 0}, {"livekitPrometheusPort": 7880},
    {"provider": "local"}, {"nodeCoutn": 2}, {"livekitVersion": "1.99.0"}, {"serverType": "cax11", "livekitVersion": "1.9.11"},
], ids=["region", "no-admin", "no-ssh-key", "short-secret", "host-outside-zone", "node-count", "port-clash",
        "local-is-no-stack", "typo-key", "unpinned-livekit", "unpinned-arm64"])
def test_invalid_config_creates_nothing(bad):
    with pytest.raises(ConfigError) as err:
        run_stack({**SINGLE, **bad}, secret_keys=[k for k in bad if k == "apiSecret"])
    assert err.value.problems
    assert harness.LAST["mocks"].registered == []  # not even the component or a random password


def test_every_config_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        run_stack({**SINGLE, "region": "mars1", "adminCidrs": []})
    assert {k for k, _ in err.value.problems} == {"region", "adminCidrs"}
    assert harness.LAST["mocks"].registered == []


@pytest.mark.parametrize("index", range(len(spec_for(CLUSTER).cloud_firewall)))
def test_firewall_comparison_fails_when_any_rule_is_missing(index):
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    expected = expected_rules(spec)
    with pytest.raises(AssertionError, match="missing"):
        assert_same(expected[:index] + expected[index + 1:], actual_rules(run), "firewall rules")


@pytest.mark.parametrize("index", range(len(spec_for(CLUSTER).dns_records)))
def test_dns_comparison_fails_when_any_record_is_missing(index):
    spec, run = spec_for(CLUSTER), run_stack(CLUSTER)
    actual = actual_dns(run)
    del actual[list(actual)[index]]
    with pytest.raises(AssertionError, match="missing"):
        harness.assert_same_dns(harness.expected_dns(spec, run.ip_of()), actual)


def test_a_program_that_drops_a_spec_rule_fails_the_comparison(monkeypatch):
    real_load = program_main.validate.load

    def dropping(*args, **kwargs):
        spec = real_load(*args, **kwargs)
        return dataclasses.replace(spec, cloud_firewall=spec.cloud_firewall[1:])

    monkeypatch.setattr(program_main.validate, "load", dropping)
    run = run_stack(SINGLE)
    with pytest.raises(AssertionError, match="missing"):
        assert_same(expected_rules(spec_for(SINGLE)), actual_rules(run), "firewall rules")
