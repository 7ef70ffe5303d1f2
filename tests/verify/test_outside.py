"""From the outside: public ports reachable, private ports closed, DNS right, LiveKit answers."""
from __future__ import annotations

import pytest

from infra.outputs import Outputs
from infra.spec import EnvSpec, Role

OPEN_HINT = ("open it in the cloud firewall ({fw}) and the host firewall (make deploy), "
             "or the provider blocks it (make preflight)")


def test_dns_01_names_resolve_to_the_published_addresses(spec: EnvSpec, outputs: Outputs, probe) -> None:
    """Every name answers what the provisioner published (outputs.dns), one address per node serving it."""
    for record in spec.dns_records:
        got = probe("resolve", name=record.name, server=outputs.dns_server)
        want = sorted(outputs.dns.get(record.name, []))
        assert len(want) == record.address_count, (f"the outputs publish {want} for {record.name}, which "
                                                f"{', '.join(record.nodes)} serve: re-run the provisioner (make up)")
        assert got["a"] == want, (f"{record.name} resolves to {got['a'] or got.get('error')}, expected {want}: "
                                  "fix the DNS record (pulumi up) or wait for propagation")


def test_net_01_public_tcp_ports_reachable(spec: EnvSpec, outputs: Outputs, probe) -> None:
    fw = "managed by pulumi" if spec.cloud_firewall_managed else "yours to open"
    for node in outputs.nodes:
        for port in spec.public_ports():
            if port.protocol != "tcp" or (port.role and port.role.value not in node.roles):
                continue
            got = probe("tcp", host=node.public_ip, port=port.start)
            assert got["open"], (f"{port.label} ({port.name}) on {node.name} {node.public_ip} is unreachable from "
                                 f"outside: {got.get('error')}; " + OPEN_HINT.format(fw=fw))


def test_net_02_turn_udp_answers_stun(spec: EnvSpec, outputs: Outputs, probe) -> None:
    """STUN over UDP answers from outside; where the provider blocks UDP (blockUdp) it must not."""
    port = spec.port("turn-udp")
    for node in outputs.nodes:
        if Role.TURN.value not in node.roles:
            continue
        got = probe("stun", host=node.public_ip, port=port.start)
        if spec.udp_blocked:
            assert not got["open"], (f"UDP {port.start} on {node.name} answers STUN from outside although the "
                                     "provider blocks UDP (blockUdp): the emulated provider is not blocking it")
            continue
        assert got["open"], (f"UDP {port.start} (TURN/STUN) on {node.name} gets no STUN answer from outside: "
                             f"{got.get('error')}; open UDP {port.start} in the cloud firewall, or the provider "
                             "blocks UDP (make preflight)")


def test_net_03_private_ports_closed_from_outside(spec: EnvSpec, outputs: Outputs, probe) -> None:
    """7880, Prometheus, Redis, agent health, the speech and token services, SNI upstreams: never public."""
    checked = [(node, port) for node in outputs.nodes for port in spec.closed_ports()
               if port.protocol == "tcp" and not (port.role and port.role.value not in node.roles)]
    got = probe("tcp_each", targets=[[node.public_ip, port.start] for node, port in checked], timeout=2.0)["results"]
    exposed = [f"{port.label} ({port.name}, {port.scope.value} only) on {node.name}"
               for (node, port), result in zip(checked, got, strict=True) if result["open"]]
    assert not exposed, ("reachable from the internet: " + "; ".join(exposed) +
                         " — bind it to loopback/the private network and close it in both firewalls")


def test_net_04_ssh_closed_outside_admin_cidrs(spec: EnvSpec, outputs: Outputs, probe) -> None:
    if spec.config.allow_world_ssh or not outputs.client_netns:
        pytest.skip("SSH is world-open by choice, or there is no vantage point outside the admin CIDRs")
    for node in outputs.nodes:
        got = probe("tcp", host=node.public_ip, port=22, timeout=2.0)
        assert not got["open"], (f"SSH on {node.name} answers a client outside adminCidrs "
                                 f"{list(spec.config.admin_cidrs)}: restrict port 22 in the cloud firewall")


@pytest.mark.parametrize("which", ["livekit", "turn"])
def test_tls_01_certificates_valid(spec: EnvSpec, outputs: Outputs, probe, cafile, which: str) -> None:
    """The LiveKit name's certificate, and each TURN node's own TURN name's (coturn on 443 by SNI)."""
    names = [spec.config.livekit_host] if which == "livekit" else list(spec.turn_hosts().values())
    port = spec.port("https").start if which == "livekit" else spec.config.turn_tls_port
    assert names, "the spec names no TURN node"
    for name in names:
        got = probe("tls", host=name, port=port, server_name=name, cafile=cafile)
        assert got["ok"], (f"TLS to {name}:{port} failed: {got.get('error')}; check the certificate (Caddy logs: "
                           "journalctl -u caddy) and that DNS points at the node")
        assert name in got["san"], f"certificate for {got['san']} does not name {name}"
        assert got["version"] in ("TLSv1.2", "TLSv1.3")
        assert got["days_left"] >= 14, f"certificate of {name} expires in {got['days_left']} days: renewal is failing"


def test_http_01_livekit_answers_ok(spec: EnvSpec, probe, cafile) -> None:
    got = probe("https_get", url=f"https://{spec.config.livekit_host}/", cafile=cafile)
    assert got["status"] == 200 and got["body"].strip() == "OK", (
        f"https://{spec.config.livekit_host}/ answered {got.get('status')} {got.get('body', got.get('error'))!r}; "
        "LiveKit is down or Caddy does not reach it (systemctl status livekit caddy on the node)")
    assert "max-age" in got["headers"].get("Strict-Transport-Security", ""), "HSTS header missing"
