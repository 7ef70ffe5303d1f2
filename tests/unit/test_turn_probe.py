"""The TURN probe of the verify suite, against a real coturn on loopback.

Proves the probe can tell an allowed peer from a refused one, so the verify suite's TURN
checks can fail (a deny-everything or allow-everything coturn would be noticed).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from infra.probes.turn import TurnSession, binding, rest_credentials

SECRET = "unit-test-secret-0123456789abcdef0123"
ALLOWED = "192.0.2.5"  # TEST-NET-1: a permission only; nothing is ever sent there


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PUBLIC = "203.0.113.7"  # TEST-NET-3: what a 1:1 NAT would map 127.0.0.1 to; only ever written in replies


def _start_coturn(tmp_path_factory: pytest.TempPathFactory, *extra: str, ports: str = "45000-45200") -> Iterator[int]:
    if shutil.which("turnserver") is None:
        pytest.fail("turnserver missing: run 'make deps' (Debian package coturn)")
    port = _free_port()
    low, high = ports.split("-")
    conf: Path = tmp_path_factory.mktemp("coturn") / "turnserver.conf"
    conf.write_text("\n".join([
        "listening-ip=127.0.0.1", f"listening-port={port}", "relay-ip=127.0.0.1", *extra, f"min-port={low}",
        f"max-port={high}", "use-auth-secret", f"static-auth-secret={SECRET}", "realm=unit.test", "no-cli",
        "no-tls", "no-dtls", f"allowed-peer-ip={ALLOWED}", "denied-peer-ip=0.0.0.0-255.255.255.255",
        "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "no-multicast-peers",
        "pidfile=" + str(conf.with_suffix(".pid")), "log-file=stdout", ""]))
    proc = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            binding("127.0.0.1", port, timeout=0.5)
            break
        except (TimeoutError, OSError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("coturn did not answer STUN within 15 s")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from _start_coturn(tmp_path_factory)


@pytest.fixture(scope="module")
def coturn_behind_nat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """coturn as the deploy renders it behind 1:1 NAT: bound to the interface, external-ip public/interface."""
    yield from _start_coturn(tmp_path_factory, f"external-ip={PUBLIC}/127.0.0.1", ports="45201-45400")


def test_behind_nat_the_relay_candidate_carries_the_public_address(coturn_behind_nat: int) -> None:
    user, password = rest_credentials(SECRET)
    session = TurnSession("127.0.0.1", coturn_behind_nat, user, password)
    try:
        result = session.allocate()
        assert result.ok and result.relayed is not None, result
        assert result.relayed[0] == PUBLIC and 45201 <= result.relayed[1] <= 45400
    finally:
        session.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_allocation_with_rest_credentials(coturn: int, transport: str) -> None:
    user, password = rest_credentials(SECRET)
    session = TurnSession("127.0.0.1", coturn, user, password, transport=transport)
    try:
        result = session.allocate()
        assert result.ok, result
        assert result.relayed and result.relayed[0] == "127.0.0.1"
    finally:
        session.close()


def test_wrong_credentials_get_401(coturn: int) -> None:
    user, _ = rest_credentials(SECRET)
    session = TurnSession("127.0.0.1", coturn, user, "not-the-password")
    try:
        result = session.allocate()
        assert not result.ok and result.code == 401
    finally:
        session.close()


@pytest.mark.parametrize("peer,allowed", [(ALLOWED, True), ("192.0.2.6", False), ("127.0.0.1", False),
                                          ("169.254.169.254", False), ("::ffff:127.0.0.1", False)])
def test_permission_follows_peer_policy(coturn: int, peer: str, allowed: bool) -> None:
    user, password = rest_credentials(SECRET)
    session = TurnSession("127.0.0.1", coturn, user, password)
    try:
        assert session.allocate().ok
        result = session.permit(peer)
        assert result.ok is allowed, result
        if not allowed:
            assert result.code in (403, 443)
    finally:
        session.close()
