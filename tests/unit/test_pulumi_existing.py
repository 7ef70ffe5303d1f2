"""Bring-your-own hosts under Pulumi mocks: no cloud resources, outputs from the host list."""
from __future__ import annotations

import pytest

from infra import spec as specmod
from infra.cloud import stack_outputs
from infra.config import ConfigError

from . import pulumi_harness as harness
from .pulumi_harness import ADMIN, expected_rules, run_stack, spec_for

HOSTS = [{"name": "edge-a", "publicIp": "203.0.113.10", "privateIp": "10.1.0.5"},
         {"name": "edge-b", "publicIp": "203.0.113.11", "privateIp": "10.1.0.6"}]
PAIR = {"provider": "existing", "domain": "example.net", "adminCidrs": [ADMIN], "nodeCount": 2, "hosts": HOSTS}
ONE = {"provider": "scaleway", "domain": "example.net", "adminCidrs": [ADMIN], "hosts": [{"publicIp": "203.0.113.20"}]}


@pytest.fixture(scope="module")
def pair():
    return run_stack(PAIR)


def test_no_cloud_resource_is_created(pair):
    kinds = {r.typ for r in pair.custom()}
    assert kinds == {"random:index/randomPassword:RandomPassword"}


def test_nodes_come_from_the_host_list(pair):
    assert [(n["name"], n["public_ip"], n["private_ip"]) for n in pair.outputs["nodes"]] == \
        [(h["name"], h["publicIp"], h["privateIp"]) for h in HOSTS]
    assert [n["name"] for n in pair.outputs["nodes"] if "redis" in n["roles"]] == ["edge-a", "edge-b"]


def test_cloud_firewall_is_flagged_as_the_operators_job_with_the_rules_to_apply(pair):
    assert specmod.from_json(pair.outputs["spec"]).cloud_firewall_managed is False
    info = pair.outputs["info"]
    listed = [(r["protocol"], r["ports"], tuple(r["sources"])) for r in info["cloud_firewall_rules"]]
    assert listed == expected_rules(spec_for(PAIR))


def test_secrets_are_generated_and_secret(pair):
    assert all(pair.secret[k] and len(pair.outputs[k]) >= 48 for k in ("api_secret", "turn_secret", "token_key"))


def test_deploy_on_up_is_triggered_by_the_host_addresses():
    triggers = run_stack({**PAIR, "deployOnUp": True}).one("command:local:Command").inputs["triggers"]
    assert triggers[:-1] == ["203.0.113.10", "203.0.113.11"]


def test_a_provider_with_manual_udp_setup_carries_its_warning():
    run = run_stack(ONE)
    assert run.outputs["nodes"][0]["name"] == "node-1" and run.outputs["nodes"][0]["private_ip"] is None
    assert any("UDP" in w for w in run.outputs["info"]["warnings"])


def test_a_host_behind_1_to_1_nat_reports_its_interface_address():
    hosts = [{"name": "edge-a", "publicIp": "203.0.113.10", "privateIp": "10.1.0.5", "interfaceIp": "172.31.5.9"},
             HOSTS[1]]
    run = run_stack({**PAIR, "provider": "aws", "hosts": hosts})
    nodes = {n["name"]: n for n in run.outputs["nodes"]}
    assert (nodes["edge-a"]["network"], nodes["edge-a"]["interface_ip"]) == ("nat", "172.31.5.9")
    assert (nodes["edge-b"]["network"], nodes["edge-b"]["interface_ip"]) == ("direct", "203.0.113.11")
    out = stack_outputs.to_outputs(run.outputs, "/keys/deploy")
    assert out.node("edge-a").interface_ip == "172.31.5.9" and out.dns["edge-a.turn.example.net"] == ["203.0.113.10"]
    # Where the operator's own firewall also filters traffic between the hosts: the flows to allow.
    assert {(r["protocol"], r["ports"]) for r in run.outputs["info"]["node_firewall_rules"]} >= {("tcp", "6379")}


def test_hosts_that_disagree_with_node_count_create_nothing():
    with pytest.raises(ConfigError) as err:
        run_stack({**PAIR, "nodeCount": 3})
    assert [k for k, _ in err.value.problems] == ["nodeCount"]
    assert harness.LAST["mocks"].registered == []
