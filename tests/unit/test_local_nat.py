"""The emulated 1:1 NAT, for real: the local cloud's router in throwaway network namespaces.

A namespace stands in for the host. In it, `network.ensure_host`, `ensure_machine_links` and
`firewall.apply` build exactly what `python -m infra.local up` builds for two `nat` machines;
no machine is booted, plain sockets in the machines' namespaces answer instead. Every
namespace is the test's own (`vs-unitnat.*`) and is deleted at the end; nothing touches the
host's own network.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infra.local import network
from infra.local.names import EnvNames
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
ENV = "unitnat"
NAMES = EnvNames(ENV)
HOST_NS = f"{NAMES.netns_prefix}host"
NODE_NS = [NAMES.node_netns("node-1"), NAMES.node_netns("node-2")]
PUB = [NAMES.node_public_ip(0), NAMES.node_public_ip(1)]
IFACE = [NAMES.node_interface_ip(0), NAMES.node_interface_ip(1)]

@pytest.fixture(autouse=True, scope="module")
def _host_tools() -> None:
    require("nft", "ip", root=True)  # network namespaces and nftables

BUILD = """
import sys
from infra.local import firewall, network
from infra.local import network
from infra.local.names import EnvNames
from tests.unit.support import spec_of
names = EnvNames({env!r})
spec = spec_of(2, env={env!r}, network="nat", adminCidrs=[names.operator_ip + "/32"], blockUdp={block_udp})
network.ensure_host(names, spec)
for node in spec.nodes:
    network.ensure_machine_links(names, spec, node.index)
firewall.apply(names, spec)
"""

# A one-shot server: answers each datagram / connection with what it saw (peer, own address).
SERVE = """
import json, socket, sys
kind, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.settimeout(8)
print("ready", flush=True)
if kind == "udp":
    data, peer = s.recvfrom(100)
    s.sendto(json.dumps({"peer": peer[0]}).encode(), peer)
else:
    s.listen(1)
    conn, peer = s.accept()
    conn.sendall(json.dumps({"peer": peer[0], "local": conn.getsockname()[0]}).encode())
    conn.close()
"""

ASK = """
import json, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"hello", (host, port))
        data, source = s.recvfrom(100)
        print(json.dumps({**json.loads(data), "source": source[0]}))
    else:
        s = socket.create_connection((host, port), timeout=2)
        print(json.dumps({**json.loads(s.recv(200)), "source": s.getpeername()[0]}))
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _netns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _cleanup() -> None:
    listed = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout.strip()
    for ns in json.loads(listed) if listed else []:
        if ns["name"].startswith(NAMES.netns_prefix):
            subprocess.run(["ip", "netns", "del", ns["name"]], capture_output=True)


def _build(block_udp: bool = False) -> None:
    code = BUILD.format(env=ENV, block_udp=block_udp)
    proc = subprocess.run(_netns(HOST_NS, sys.executable, "-c", code), cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


@pytest.fixture(scope="module", params=["routed", "bridge-netfilter"])
def router(request):
    """The router both ways a host may run it: plain routing, or with br_netfilter (Docker hosts)
    calling the IP hooks for bridged frames, which DNATs hairpin traffic on the bridge itself."""
    if not BRIDGE_NF.exists():
        if request.param == "bridge-netfilter":
            pytest.skip("br_netfilter is not loaded on this host (the routed variant covers it)")
    _cleanup()
    # Made out here: a namespace added from inside `ip netns exec` is not usable outside it.
    for ns in (HOST_NS, *network.client_namespaces(NAMES), *NODE_NS):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(_netns(HOST_NS, "ip", "link", "set", "lo", "up"), check=True)
        if BRIDGE_NF.exists():  # a per-namespace setting: only the test's own host namespace changes
            value = "1" if request.param == "bridge-netfilter" else "0"
            subprocess.run(_netns(HOST_NS, "sh", "-c", f"echo {value} > {BRIDGE_NF}"), check=True)
        _build()
        yield
    finally:
        _cleanup()


def exchange(server_ns: str, client_ns: str, kind: str, host: str, port: int) -> dict:
    """Start a one-shot server in `server_ns`, reach `host:port` from `client_ns`; what both saw."""
    server = subprocess.Popen(_netns(server_ns, sys.executable, "-c", textwrap.dedent(SERVE), kind, str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        proc = subprocess.run(_netns(client_ns, sys.executable, "-c", textwrap.dedent(ASK), kind, host, str(port)),
                              capture_output=True, text=True, timeout=20)
        return json.loads(proc.stdout)
    finally:
        server.kill()
        server.wait()


def test_a_machine_holds_only_its_private_address(router) -> None:
    out = subprocess.run(["ip", "-n", NODE_NS[0], "-j", "-4", "addr", "show", "dev", "eth0"], capture_output=True,
                         text=True, check=True).stdout
    assert [a["local"] for link in json.loads(out) for a in link["addr_info"]] == [IFACE[0]]


def test_the_internet_reaches_the_public_address_and_sees_only_public_addresses(router) -> None:
    got = exchange(NODE_NS[0], NAMES.client_netns, "tcp", PUB[0], 443)
    assert got == {"peer": NAMES.client_ip, "local": IFACE[0], "source": PUB[0]}


def test_the_cloud_firewall_still_filters_behind_the_nat(router) -> None:
    assert "error" in exchange(NODE_NS[0], NAMES.client_netns, "tcp", PUB[0], 7880)   # closed (loopback scope)
    assert "error" in exchange(NODE_NS[0], NAMES.client_netns, "tcp", PUB[0], 22)     # admin CIDRs only
    # The host itself (the deploy's SSH) comes from the admin address and is let in.
    assert exchange(NODE_NS[0], HOST_NS, "tcp", PUB[0], 22)["peer"] == NAMES.operator_ip


def test_a_machine_going_out_is_seen_with_its_public_address(router) -> None:
    got = exchange(NAMES.client_netns, NODE_NS[1], "udp", NAMES.client_ip, 5000)
    assert got == {"peer": PUB[1], "source": NAMES.client_ip}


@pytest.mark.parametrize("sender", [0, 1], ids=["another-machine", "itself"])
def test_hairpin_a_machine_reaches_a_public_address_and_is_seen_with_its_own(router, sender: int) -> None:
    """coturn on node-1 relays to LiveKit's public address on node-2 (or on node-1 itself)."""
    target = 1
    got = exchange(NODE_NS[target], NODE_NS[sender], "udp", PUB[target], 50010)
    assert got == {"peer": PUB[sender], "source": PUB[target]}


def test_block_udp_drops_udp_from_the_internet_but_not_between_machines(router) -> None:
    _build(block_udp=True)
    try:
        assert "error" in exchange(NODE_NS[0], NAMES.client_netns, "udp", PUB[0], 3478)
        assert exchange(NODE_NS[0], NAMES.client_netns, "tcp", PUB[0], 443)["peer"] == NAMES.client_ip
        assert exchange(NODE_NS[1], NODE_NS[0], "udp", PUB[1], 50011)["peer"] == PUB[0]
    finally:
        _build(block_udp=False)
    assert exchange(NODE_NS[0], NAMES.client_netns, "udp", PUB[0], 3478)["peer"] == NAMES.client_ip


def test_each_network_condition_has_a_client_namespace_of_its_own_with_its_filter(router) -> None:
    """The verify suite's round trips run at once, each in its condition's namespace: the filter
    of one never reaches the others, and each is seen from its own internet address."""
    udp_blocked, tcp443 = NAMES.condition_netns("udp-blocked"), NAMES.condition_netns("tcp443-only")
    addresses = network.client_namespaces(NAMES)
    assert exchange(NODE_NS[0], NAMES.client_netns, "udp", PUB[0], 3478)["peer"] == NAMES.client_ip
    assert "error" in exchange(NODE_NS[0], udp_blocked, "udp", PUB[0], 3478)
    assert exchange(NODE_NS[0], udp_blocked, "tcp", PUB[0], 3478)["peer"] == addresses[udp_blocked]
    assert "error" in exchange(NODE_NS[0], tcp443, "udp", PUB[0], 3478)
    assert "error" in exchange(NODE_NS[0], tcp443, "tcp", PUB[0], 7881)
    assert exchange(NODE_NS[0], tcp443, "tcp", PUB[0], 443)["peer"] == addresses[tcp443]
