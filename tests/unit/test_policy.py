"""The policy pack, without the CLI: each policy's validate() on constructed and on program-recorded props."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs

from .pulumi_harness import ADMIN, SSH_KEY, run_stack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "policy"))
import voicestack_policies as vp  # noqa: E402

OPTS = PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                             custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[])
WORLD = ["0.0.0.0/0", "::/0"]
ICE_HCLOUD = {"direction": "in", "protocol": "udp", "port": "50000-60000", "sourceIps": WORLD}
ICE_DO = {"protocol": "udp", "portRange": "50000-60000", "sourceAddresses": WORLD}
EGRESS = [{"protocol": p, "portRange": r, "destinationAddresses": WORLD}
          for p, r in (("tcp", "1-65535"), ("udp", "1-65535"), ("icmp", None))]


def violations(policy, typ: str, props: dict, name: str = "fw") -> list[str]:
    found: list[str] = []
    args = ResourceValidationArgs(resource_type=typ, props=props, urn=f"urn:pulumi:s::voicestack::{typ}::{name}",
                                  name=name, opts=OPTS, provider=None)
    assert policy.validate(args, lambda msg, urn=None: found.append(msg)) is None
    return found


def test_policies_read_their_ports_from_the_spec():
    assert {p.start for p in vp.INTERNAL_PORTS} == {6379, 26379, 7880, 6789}
    assert (vp.ICE_UDP.start, vp.ICE_UDP.end) == (50000, 60000)


@pytest.mark.parametrize("port", ["6379", "26379", "7880", "6789", "6000-7000", "any"])
def test_hcloud_rule_opening_an_internal_port_is_a_violation(port):
    props = {"rules": [ICE_HCLOUD, {"direction": "in", "protocol": "tcp", "port": port, "sourceIps": WORLD}]}
    assert violations(vp.no_public_internal_ports, vp.HCLOUD_FIREWALL, props)


@pytest.mark.parametrize("port", ["6379", "7880", "6789", "1-65535"])
def test_do_rule_opening_an_internal_port_is_a_violation_even_from_one_address(port):
    props = {"inboundRules": [ICE_DO, {"protocol": "tcp", "portRange": port, "sourceAddresses": ["192.0.2.9/32"]}],
             "outboundRules": EGRESS}
    assert violations(vp.no_public_internal_ports, vp.DO_FIREWALL, props)


def test_do_rule_letting_only_the_envs_own_droplets_reach_an_internal_port_passes():
    tagged = {"protocol": "tcp", "portRange": "6379", "sourceTags": ["voicestack-prod"]}
    props = {"inboundRules": [ICE_DO, tagged], "outboundRules": EGRESS}
    assert violations(vp.no_public_internal_ports, vp.DO_FIREWALL, props) == []
    props["inboundRules"][1] = {**tagged, "sourceAddresses": ["10.77.0.0/24"]}  # an address as well: judged
    assert violations(vp.no_public_internal_ports, vp.DO_FIREWALL, props)


def test_udp_on_an_internal_port_number_and_outbound_rules_pass():
    props = {"rules": [ICE_HCLOUD, {"direction": "in", "protocol": "udp", "port": "6379", "sourceIps": WORLD},
                       {"direction": "out", "protocol": "tcp", "port": "6379", "destinationIps": WORLD}]}
    assert violations(vp.no_public_internal_ports, vp.HCLOUD_FIREWALL, props) == []


@pytest.mark.parametrize("typ, props", [
    (vp.HCLOUD_FIREWALL, {"rules": []}),
    (vp.HCLOUD_FIREWALL, {"rules": [{**ICE_HCLOUD, "sourceIps": ["198.51.100.0/24"]}]}),
    (vp.HCLOUD_FIREWALL, {"rules": [{**ICE_HCLOUD, "port": "50000-55000"}]}),
    (vp.DO_FIREWALL, {"inboundRules": [{**ICE_DO, "protocol": "tcp"}], "outboundRules": EGRESS}),
], ids=["no-rule", "not-from-the-internet", "range-too-small", "tcp-not-udp"])
def test_missing_ice_udp_rule_is_a_violation(typ, props):
    assert violations(vp.ice_udp_open, typ, props)


def test_do_firewall_without_egress_is_a_violation():
    assert violations(vp.do_egress, vp.DO_FIREWALL, {"inboundRules": [ICE_DO], "outboundRules": EGRESS[:2]})
    assert violations(vp.do_egress, vp.DO_FIREWALL, {"inboundRules": [ICE_DO], "outboundRules": EGRESS}) == []


def test_other_resources_are_not_judged():
    for policy in vp.POLICIES:
        assert violations(policy, "hcloud:index/server:Server", {"serverType": "cx23"}) == []


@pytest.mark.parametrize("config", [
    {"provider": "hetzner", "nodeCount": 3},
    {"provider": "digitalocean", "nodeCount": 2},
    {"provider": "hetzner", "iceMode": "range", "turnTlsPort": 5349},
], ids=["hetzner-cluster", "digitalocean-cluster", "hetzner-own-turn-tls"])
def test_the_programs_firewalls_pass_every_policy(config):
    run = run_stack({"domain": "example.com", "adminCidrs": [ADMIN], "sshPublicKey": SSH_KEY, **config})
    firewalls = run.of(vp.HCLOUD_FIREWALL) + run.of(vp.DO_FIREWALL)
    main = [f for f in firewalls if not vp.balancer_only(f.typ, f.inputs)]
    assert len(main) == 1
    # A DigitalOcean cluster adds its load balancer's firewall, which the policies pass too.
    assert len(firewalls) == 1 + (config["provider"] == "digitalocean" and config.get("nodeCount", 1) > 1)
    for fw in firewalls:
        for policy in vp.POLICIES:
            assert violations(policy, fw.typ, fw.inputs) == [], policy.name


def test_a_balancer_firewall_with_a_rule_from_addresses_is_judged_like_any_firewall():
    lb_rule = {"protocol": "tcp", "portRange": "8843", "sourceLoadBalancerUids": ["lb-1"]}
    assert vp.balancer_only(vp.DO_FIREWALL, {"inboundRules": [lb_rule]})
    world = {"protocol": "tcp", "portRange": "6379", "sourceAddresses": list(WORLD)}
    assert not vp.balancer_only(vp.DO_FIREWALL, {"inboundRules": [lb_rule, world]})
    assert violations(vp.ice_udp_open, vp.DO_FIREWALL, {"inboundRules": [lb_rule, world]})
