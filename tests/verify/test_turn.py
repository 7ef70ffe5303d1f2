"""TURN from the outside, on every TURN node at its own name: REST-credential allocations over UDP
and TLS/443, the relay address, the peer policy.

Where the provider blocks UDP (the spec's blockUdp), the UDP allocation must fail (so the
check still proves something) and the credential and peer checks run over TLS instead.
"""
from __future__ import annotations

import secrets

import pytest

from infra.outputs import Outputs
from infra.probes.turn import rest_credentials
from infra.spec import EnvSpec

FORBIDDEN_PEERS = ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "::1",
                   "::ffff:127.0.0.1", "::ffff:169.254.169.254"]


def _turn(probe, outputs: Outputs, spec: EnvSpec, turn_host: str, transport: str, password: str | None = None,
          peers: list[str] | None = None, cafile: str | None = None) -> dict:
    # A username of its own per check: coturn's user-quota counts allocations per username, and the
    # suite's checks run at once (a shared name once hit "486 Allocation Quota Reached").
    user, pw = rest_credentials(outputs.turn_secret, f"verify-{secrets.token_hex(4)}")
    port = spec.config.turn_tls_port if transport == "tls" else spec.config.turn_udp_port
    return probe("turn", host=turn_host, port=port, username=user, password=password or pw,
                 transport=transport, server_name=turn_host, cafile=cafile, peers=peers or [])


def _control_transport(spec: EnvSpec) -> str:
    """The transport of the checks that test coturn itself (not the network): UDP unless it is blocked."""
    return "tls" if spec.udp_blocked else "udp"


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_turn_01_allocation_with_rest_credentials(probe, outputs, spec, cafile, transport: str) -> None:
    for node, name in spec.turn_hosts().items():
        got = _turn(probe, outputs, spec, name, transport, cafile=cafile)
        if transport == "udp" and spec.udp_blocked:
            assert not got["allocated"] and got["code"] is None, (
                f"a TURN allocation over UDP at {name} ({node}) succeeded ({got}) although the provider blocks "
                "UDP (blockUdp): the emulated provider is not blocking it")
            continue
        assert got["allocated"], (f"TURN allocation over {transport} at {name} ({node}) failed ({got['code']} "
                                  f"{got['reason']}): check coturn there (systemctl status coturn), its "
                                  "static-auth-secret and the firewall")


def test_turn_04_relay_address_is_the_public_address_of_the_turn_node(probe, outputs, spec, cafile) -> None:
    """The relay candidate clients get must be reachable from outside: behind 1:1 NAT that is
    coturn's external-ip, never the interface's private address; and each TURN name is its own
    node (DNS), not another's."""
    for node, name in spec.turn_hosts().items():
        got = _turn(probe, outputs, spec, name, "tls", cafile=cafile)
        assert got["allocated"], (name, got)
        public = outputs.node(node).public_ip
        assert got["relayed"] and got["relayed"][0] == public, (
            f"coturn at {name} hands out relay address {got['relayed']}, not the public address of {node} "
            f"({public}): set external-ip=<public>/<interface> for a node behind 1:1 NAT (network nat), and "
            "relay-ip to the interface address; or the TURN name's DNS record points at another node")
        relay = spec.port("turn-relay")
        assert relay.start <= got["relayed"][1] <= relay.end, (
            f"relay port {got['relayed'][1]} at {name} outside {relay.label}")


def test_turn_02_wrong_credentials_get_401(probe, outputs, spec, cafile) -> None:
    for node, name in spec.turn_hosts().items():
        got = _turn(probe, outputs, spec, name, _control_transport(spec), password="wrong-password", cafile=cafile)
        assert not got["allocated"] and got["code"] == 401, (
            f"coturn at {name} ({node}) accepted or mis-answered bad credentials: {got}")


def test_turn_03_peer_policy_allows_only_livekit(probe, outputs, spec, node_ips, cafile) -> None:
    # LiveKit advertises its public node IPs only (rtc.node_ip): that is where relayed media goes.
    livekit_peers = [n.public_ip for n in outputs.nodes if "livekit" in n.roles]
    for node, name in spec.turn_hosts().items():
        got = _turn(probe, outputs, spec, name, _control_transport(spec), peers=FORBIDDEN_PEERS + livekit_peers,
                    cafile=cafile)
        assert got["allocated"], (name, got)
        perms = got["permissions"]
        leaked = [p for p in FORBIDDEN_PEERS if perms[p]["ok"]]
        assert not leaked, (f"coturn at {name} ({node}) relays to {leaked}: an open relay into the node's internal "
                            "networks; set allowed-peer-ip to the LiveKit nodes and deny everything else")
        refused = [p for p in livekit_peers if not perms[p]["ok"]]
        assert not refused, (f"coturn at {name} ({node}) refuses the LiveKit node(s) {refused}: media through "
                             "TURN cannot reach LiveKit")
