"""One node behind the emulated 1:1 NAT (`network: nat`), then a provider that blocks UDP.

One local environment of its own (`e2enat`): each machine's eth0 holds only a private address
and the host maps the public one. Provisioned and deployed once; then the unchanged verify
suite must pass (ports, TLS, DNS, TURN relay address, the three client network conditions,
LiveKit's candidates carrying the public address), the rendered configs must say what the
model asks for, and with `blockUdp: true` added (the same machines, only the emulated cloud
changes) preflight must report UDP blocked with the provider advice while the UDP checks of
the verify suite see it blocked and the spoken round trips still pass over TCP and TURN/TLS.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from infra import outputs
from tests.e2e import envs, network

ENV = "e2enat"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    config = envs.write_config(tmp_path_factory.mktemp(ENV) / f"Pulumi.{ENV}.yaml", {"network": "nat"})
    ctx = envs.fresh_deployed(ENV, 1, config=config)
    ctx.config_dir = config.parent
    yield ctx
    envs.down(ENV)


def test_01_the_machine_holds_only_a_private_address_the_public_one_is_mapped(env) -> None:
    out = outputs.read(ENV)
    node = out.nodes[0]
    assert node.network == "nat" and node.interface_ip != node.public_ip
    eth0 = network.ssh(ENV, node.name, "ip -4 -o addr show dev eth0")
    assert f" {node.interface_ip}/" in eth0 and node.public_ip not in eth0
    assert node.public_ip not in network.ssh(ENV, node.name, "ip -4 -o addr show")


def test_02_the_deploy_binds_the_interface_and_advertises_the_public_address(env) -> None:
    node = outputs.read(ENV).nodes[0]
    lines = network.rendered_lines(ENV, node.name)
    print(json.dumps({"model": "nat", "node": node.name, "public_ip": node.public_ip,
                      "interface_ip": node.interface_ip, **lines}, indent=2))
    lk = lines["livekit.yaml"]
    assert f"node_ip: {node.public_ip}" in lk and "use_external_ip: false" in lk and f"- {node.interface_ip}/32" in lk
    turn = lines["turnserver.conf"]
    for line in (f"listening-ip={node.interface_ip}", f"relay-ip={node.interface_ip}",
                 f"external-ip={node.public_ip}/{node.interface_ip}", f"allowed-peer-ip={node.public_ip}"):
        assert line in turn, f"{line} missing from turnserver.conf: {turn}"
    # coturn really serves (it would loop forever on a bind of the public address, looking active).
    sockets = network.ssh(ENV, node.name, "ss -Hlntu")
    assert f"{node.interface_ip}:3478" in sockets and f"{node.interface_ip}:5349" in sockets


def test_03_the_verify_suite_passes_unchanged(env) -> None:
    proc = network.verify(ENV)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    seen = json.loads(outputs.EnvPaths(ENV).verify_results.read_text())["round_trips"]
    print("ICE the client saw (nat, one node):\n" + json.dumps(seen, indent=2))
    node = outputs.read(ENV).nodes[0]
    for condition, trip in seen.items():
        assert all(c.startswith(f"{node.public_ip}:") for c in trip["ice_remote"]), (condition, trip)


def test_04_a_provider_that_blocks_udp_preflight_says_so(env) -> None:
    config = envs.write_config(env.config_dir / f"Pulumi.{ENV}.yaml", {"network": "nat", "blockUdp": True})
    envs.up(ENV, 1, config=config)  # same machines; the emulated cloud now drops UDP from the internet
    assert outputs.read(ENV).spec.udp_blocked
    proc = subprocess.run([sys.executable, "-m", "infra.preflight", "--env", ENV], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    print(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    ice = env.spec.port("livekit-ice-udp")
    assert f"udp/{ice.start}: BLOCKED" in proc.stdout and f"udp/{ice.end}: BLOCKED" in proc.stdout
    assert "verdict: UDP BLOCKED" in proc.stdout and "OVH" in proc.stdout and "blockUdp" in proc.stdout


def test_05_with_udp_blocked_voice_still_works_over_tcp_and_turn_tls(env) -> None:
    """The UDP checks assert the block (they can still fail); TURN/TLS, ICE/TCP and voice must work."""
    assert outputs.read(ENV).spec.udp_blocked
    # The other two client conditions add nothing here: the provider already drops all UDP.
    proc = network.verify(ENV, "net_02", "turn_", "(voice_01 and normal)")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    tally = proc.stdout.strip().splitlines()[-1]
    assert " passed" in tally and "skipped" not in tally and "failed" not in tally, tally
    seen = json.loads(outputs.EnvPaths(ENV).verify_results.read_text())["round_trips"]
    print("ICE the client saw (nat, UDP blocked by the provider):\n" + json.dumps(seen, indent=2))
    # No UDP reaches the node from outside: ICE over TCP, or a candidate of a TURN server (relay, or
    # peer-reflexive learned through the relay) reached over TCP/TLS.
    selected = seen["normal"]["ice_selected"].values()
    assert selected and all(s["remote"]["protocol"] == "tcp" or s["local"].get("relay_protocol") in ("tcp", "tls")
                            for s in selected), seen["normal"]
