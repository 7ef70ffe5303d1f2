"""What the networking e2e modules (test_edge.py, cluster/test_cross_node.py) share: the verify suite
against an env, commands on its machines, the configuration the deploy rendered, and rooms
placed on a chosen LiveKit node."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from infra import outputs as outputsmod
from infra import verify as infra_verify
from infra.local import machines
from infra.local.names import EnvNames
from infra.probes import in_client_side

ROOT = Path(__file__).resolve().parents[2]
#: The lines of the rendered configs that carry the networking model (printed for the closing note).
LIVEKIT_KEYS = ("node_ip", "use_external_ip", "ips", "includes", "- ")
COTURN_KEYS = ("listening-ip", "relay-ip", "external-ip", "allowed-peer-ip")


def verify(env: str, *select: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    """The verification suite (`make verify ENV=<env>`), optionally only the tests matching `select`."""
    t0 = time.monotonic()
    proc = infra_verify.run(env, *select, timeout=timeout)
    print(f"verify --env={env} {' '.join(select)}: rc={proc.returncode} in {time.monotonic() - t0:.0f}s\n"
          f"{proc.stdout[-4000:]}")
    return proc


def ssh(env: str, node: str, command: str, timeout: float = 60) -> str:
    out = outputsmod.read(env)
    return machines.ssh(EnvNames(env), out.node(node).public_ip, command, timeout=timeout).stdout


def rendered_lines(env: str, node: str) -> dict[str, list[str]]:
    """The networking lines of livekit.yaml (its rtc section) and turnserver.conf on a node."""
    livekit = ssh(env, node, "sed -n '/^rtc:/,/turn_servers:/p' /etc/livekit/livekit.yaml")
    coturn = ssh(env, node, "cat /etc/turnserver.conf")
    return {"livekit.yaml": [line.strip() for line in livekit.splitlines() if line.strip().startswith(LIVEKIT_KEYS)],
            "turnserver.conf": [line for line in coturn.splitlines() if line.startswith(COTURN_KEYS)]}


def turn_server_hosts(env: str, node: str) -> set[str]:
    """The TURN names LiveKit on a node hands its clients (rtc.turn_servers in its livekit.yaml)."""
    block = ssh(env, node, "sed -n '/^  turn_servers:/,/^turn:/p' /etc/livekit/livekit.yaml")
    return set(re.findall(r"^\s*- host: (\S+)$", block, re.MULTILINE))


def node_id(env: str, node: str, prometheus_port: int) -> str:
    """LiveKit's id of a node, from the node side: the node_id label of its own Prometheus metrics."""
    metrics = ssh(env, node, f"curl -fsS http://127.0.0.1:{prometheus_port}/metrics")
    found = re.search(r'node_id="([^"]+)"', metrics)
    assert found, f"no node_id label in the Prometheus metrics of {node}"
    return found.group(1)


def rooms_started(env: str, node: str) -> set[str]:
    """Rooms this node hosts or hosted: LiveKit sends room_started to the node's own webhook receiver."""
    log = ssh(env, node, "journalctl -u voicestack-webhooks --no-pager -o cat")
    return set(re.findall(r"webhook room_started room=(\S+)", log))


CREATE_ROOM = """
import asyncio, json, ssl, sys
import aiohttp
from livekit import api
args = json.loads(sys.stdin.read())
async def main():
    ctx = ssl.create_default_context(cafile=args["cafile"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        lk = api.LiveKitAPI(args["url"], args["key"], args["secret"], session=session, failover=False)
        room = await lk.room.create_room(api.CreateRoomRequest(name=args["room"], node_id=args["node_id"],
                                                                empty_timeout=300))
        print(json.dumps({"name": room.name, "sid": room.sid}))
asyncio.run(main())
"""


def create_room(out: outputsmod.Outputs, room: str, on_node_id: str) -> dict:
    """Create `room` on the LiveKit node `on_node_id` (CreateRoom's node_id), through the public
    URL from the client side, as an operator's backend would."""
    args = {"url": out.livekit_url.replace("wss://", "https://"), "key": out.api_key, "secret": out.api_secret,
            "room": room, "node_id": on_node_id, "cafile": out.ca_bundle}
    argv = in_client_side(out, [sys.executable, "-c", CREATE_ROOM])
    proc = subprocess.run(argv, cwd=ROOT, input=json.dumps(args), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"CreateRoom failed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)
