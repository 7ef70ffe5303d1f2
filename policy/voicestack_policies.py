"""Cloud firewall guardrails, read from the spec's defaults (infra/spec.py), not written here again.

* Redis, its Sentinel, the LiveKit API port and the Prometheus port never face the internet: a cloud
  firewall rule that opens them to any address is a violation; nodes reach them over the private
  network (on DigitalOcean through rules whose only sources are the environment's own droplets, by tag).
* The WebRTC media rule (ICE over UDP, from anywhere) must be there, or calls connect and stay silent.
* DigitalOcean firewalls must allow egress (they deny it otherwise: no apt, ACME or STUN).

Unit-tested without the CLI: tests/unit/test_policy.py calls each policy's validate().
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from pulumi_policy import ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from infra.config import parse
from infra.spec import WORLD, derive

HCLOUD_FIREWALL = "hcloud:index/firewall:Firewall"
DO_FIREWALL = "digitalocean:index/firewall:Firewall"

# A cluster of the defaults: the spec with every port that exists in any shape (Redis included).
_DEFAULT_SPEC = derive(parse({"provider": "hetzner", "domain": "example.com", "nodeCount": 2,
                              "adminCidrs": ["192.0.2.1/32"]}, env="policy"))
INTERNAL_PORTS = tuple(_DEFAULT_SPEC.port(name) for name in ("redis", "redis-sentinel", "livekit-http",
                                                             "livekit-prometheus"))
ICE_UDP = _DEFAULT_SPEC.port("livekit-ice-udp")


def _port_range(protocol: str, ports: str | None) -> tuple[int, int]:
    if protocol not in ("tcp", "udp"):
        return (0, 0)
    if ports in (None, "", "any", "all"):
        return (1, 65535)
    lo, _, hi = str(ports).partition("-")
    return (int(lo), int(hi or lo))


def inbound_rules(resource_type: str, props: Mapping[str, Any]) -> list[tuple[str, int, int, tuple[str, ...]]]:
    """(protocol, first port, last port, sources) of a firewall's inbound rules, from engine props."""
    if resource_type == HCLOUD_FIREWALL:
        rules = [(r.get("protocol"), r.get("port"), r.get("sourceIps") or [])
                 for r in props.get("rules") or [] if r.get("direction") == "in"]
    elif resource_type == DO_FIREWALL:
        rules = [(r.get("protocol"), r.get("portRange"), r.get("sourceAddresses") or [])
                 for r in props.get("inboundRules") or []]
    else:
        return []
    return [(proto, *_port_range(proto, ports), tuple(sources)) for proto, ports, sources in rules]


def balancer_only(resource_type: str, props: Mapping[str, Any]) -> bool:
    """A DigitalOcean firewall that only lets the environment's load balancer in (no outbound rule):
    it adds to the droplets' main firewall (DigitalOcean applies the union of a droplet's
    firewalls), so media and egress rules are the main firewall's to have."""
    inbound = props.get("inboundRules") or []
    return (resource_type == DO_FIREWALL and bool(inbound) and not props.get("outboundRules")
            and all(r.get("sourceLoadBalancerUids") and not r.get("sourceAddresses") for r in inbound))


def _firewalls(args: ResourceValidationArgs) -> bool:
    return args.resource_type in (HCLOUD_FIREWALL, DO_FIREWALL) and not balancer_only(args.resource_type, args.props)


def _no_public_internal_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for proto, lo, hi, sources in inbound_rules(args.resource_type, args.props):
        if not sources:
            continue  # no address at all: only tagged droplets (the environment's own nodes) are let in
        for port in INTERNAL_PORTS:
            if proto == port.protocol and lo <= port.end and port.start <= hi:
                report(f"{args.name}: inbound {proto} {lo}-{hi} from {', '.join(sources)} opens {port.label} "
                       f"({port.purpose}); keep it on the private network and remove the rule")


def _ice_udp_open(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not _firewalls(args):
        return
    if not any(proto == "udp" and lo <= ICE_UDP.start and ICE_UDP.end <= hi and set(WORLD) & set(sources)
               for proto, lo, hi, sources in inbound_rules(args.resource_type, args.props)):
        report(f"{args.name}: no inbound UDP rule opens {ICE_UDP.label} to 0.0.0.0/0; "
               "WebRTC media cannot reach LiveKit (calls connect but stay silent)")


def _egress(rules: Iterable[Mapping[str, Any]]) -> set[str]:
    return {r.get("protocol") for r in rules if set(WORLD) & set(r.get("destinationAddresses") or [])}


def _do_egress(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != DO_FIREWALL or balancer_only(args.resource_type, args.props):
        return
    missing = {"tcp", "udp", "icmp"} - _egress(args.props.get("outboundRules") or [])
    if missing:
        report(f"{args.name}: no outbound {', '.join(sorted(missing))} rule to 0.0.0.0/0 and ::/0; "
               "DigitalOcean then drops that egress (apt, ACME, STUN)")


no_public_internal_ports = ResourceValidationPolicy(
    name="no-public-internal-ports",
    description="Redis, Sentinel, the LiveKit API port and Prometheus are never opened in a cloud firewall.",
    validate=_no_public_internal_ports)
ice_udp_open = ResourceValidationPolicy(
    name="ice-udp-open", description="The WebRTC media UDP rule is open to the internet.", validate=_ice_udp_open)
do_egress = ResourceValidationPolicy(
    name="digitalocean-egress", description="DigitalOcean firewalls allow egress.", validate=_do_egress)

POLICIES = [no_public_internal_ports, ice_udp_open, do_egress]
