"""TURN from the outside: REST-credential allocations over UDP and TLS/443, and the peer policy."""
from __future__ import annotations

import pytest

from infra.outputs import Outputs
from infra.probes.turn import rest_credentials
from infra.spec import EnvSpec

FORBIDDEN_PEERS = ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "::1",
                   "::ffff:127.0.0.1", "::ffff:169.254.169.254"]


def _turn(probe, outputs: Outputs, spec: EnvSpec, transport: str, password: str | None = None,
          peers: list[str] | None = None, cafile: str | None = None) -> dict:
    user, pw = rest_credentials(outputs.turn_secret, "verify")
    port = spec.config.turn_tls_port if transport == "tls" else spec.config.turn_udp_port
    return probe("turn", host=spec.config.turn_host, port=port, username=user, password=password or pw,
                 transport=transport, server_name=spec.config.turn_host, cafile=cafile, peers=peers or [])


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_turn_01_allocation_with_rest_credentials(probe, outputs, spec, cafile, transport: str) -> None:
    got = _turn(probe, outputs, spec, transport, cafile=cafile)
    assert got["allocated"], (f"TURN allocation over {transport} failed ({got['code']} {got['reason']}): "
                              "check coturn (systemctl status coturn), its static-auth-secret and the firewall")


def test_turn_02_wrong_credentials_get_401(probe, outputs, spec) -> None:
    got = _turn(probe, outputs, spec, "udp", password="wrong-password")
    assert not got["allocated"] and got["code"] == 401, f"coturn accepted or mis-answered bad credentials: {got}"


def test_turn_03_peer_policy_allows_only_livekit(probe, outputs, spec, node_ips) -> None:
    livekit_peers = [n.private_ip or n.public_ip for n in outputs.nodes if "livekit" in n.roles]
    got = _turn(probe, outputs, spec, "udp", peers=FORBIDDEN_PEERS + livekit_peers)
    assert got["allocated"], got
    perms = got["permissions"]
    leaked = [p for p in FORBIDDEN_PEERS if perms[p]["ok"]]
    assert not leaked, (f"coturn relays to {leaked}: an open relay into the node's internal networks; "
                        "set allowed-peer-ip to the LiveKit nodes and deny everything else")
    refused = [p for p in livekit_peers if not perms[p]["ok"]]
    assert not refused, f"coturn refuses the LiveKit node(s) {refused}: media through TURN cannot reach LiveKit"
