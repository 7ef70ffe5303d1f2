"""A no-op deploy at the physical floor: one SSH per node proves nothing needs doing.

A full converge (pyinfra, about a hundred operations, each reading facts over SSH) ends by
recording on every node what it converged to: the digest of the deploy's inputs ("desired":
outputs.json, the deploy code and templates, the agent code, the voice page sources) and the
digest of the node's managed state ("actual": every managed file's content and mode, the units'
states, package versions, the loaded firewall). The next deploy first asks each node, in one
SSH command, for that record and a fresh actual digest. When every node still has the recorded
desired digest and its actual state is unchanged, nothing is left to do and pyinfra never runs.
Any difference - a changed setting, new code, a file edited on the node, a stopped unit, a
package upgrade, an interrupted deploy (it records nothing) - runs the full converge, which
restarts exactly what it touches.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from infra import outputs as outputsmod
from infra.spec import Role

ROOT = Path(__file__).resolve().parents[1]
#: The record on each node (root only): {"desired": hex, "actual": hex}.
STATE_FILE = "/var/lib/voicestack/deploy-state.json"
#: What the desired digest covers besides outputs.json: the code that decides what a node gets.
INPUT_TREES = ("deploy", "agent", "web/src", "web/package-lock.json", "web/build.py")
#: Everything the deploy writes on a node (tests/unit/test_fastpath.py checks every task's paths are in here).
MANAGED_PATHS = (
    "/etc/livekit", "/etc/caddy", "/etc/coturn", "/etc/turnserver.conf", "/etc/nginx/nginx.conf", "/etc/redis",
    "/etc/voicestack", "/etc/nftables.conf", "/etc/systemd/system", "/etc/ssh/sshd_config.d",
    "/etc/sysctl.d/60-voicestack.conf", "/etc/apt/apt.conf.d/01voicestack-proxy",
    "/etc/apt/apt.conf.d/20auto-upgrades", "/etc/fail2ban/jail.d/voicestack.conf",
    "/etc/systemd/journald.conf.d", "/usr/local/bin/livekit-server", "/usr/local/bin/caddy",
    "/usr/local/sbin/voicestack-turn-cert", "/usr/local/sbin/voicestack-wait-address", "/opt/voicestack/agent/app", "/opt/voicestack/agent/requirements.txt",
    "/opt/voicestack/agent/venv/.requirements.sha256", "/srv/voicestack",
    # Certificates Caddy renewed must reach the other nodes (the share phase): a renewal is a change.
    "/var/lib/caddy/.local/share/caddy/certificates",
)
#: Files under MANAGED_PATHS that daemons rewrite themselves (their content is not the deploy's:
#: Redis and Sentinel rewrite theirs on every failover; the deploy's seeds in /etc/voicestack/redis count).
VOLATILE = ("/etc/redis/sentinel.conf", "/etc/redis/redis.conf")
UNITS_EVERY_NODE = ("ssh", "nftables", "fail2ban", "unattended-upgrades", "systemd-journald", "apt-daily.timer",
                    "apt-daily-upgrade.timer")
UNITS_BY_ROLE = {
    Role.LIVEKIT: ("livekit", "caddy", "nginx"),
    Role.TURN: ("coturn", "voicestack-turn-cert.timer"),
    Role.REDIS: ("redis-server", "redis-sentinel"),
    Role.AGENT: ("voicestack-speech", "voicestack-agent", "voicestack-token", "voicestack-webhooks"),
}
#: Only on agent nodes of an environment that records (deploy/tasks/agent.py RECORDING_SERVICES).
RECORDING_UNITS = ("voicestack-recorder", "voicestack-recordings")
PACKAGES = ("openssh-server", "unattended-upgrades", "fail2ban", "nftables", "coturn", "nginx-light",
            "libnginx-mod-stream", "redis-server", "redis-sentinel", "python3-venv")


def _tree_digest(h: "hashlib._Hash", path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    for f in files:
        if "__pycache__" in f.parts or f.suffix == ".pyc" or "node_modules" in f.parts:
            continue
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")


def desired_digest(out: outputsmod.Outputs, node: str) -> str:
    """What the deploy would converge `node` to: the outputs and the code that turns them into files."""
    h = hashlib.sha256(node.encode() + b"\0")
    h.update(json.dumps(outputsmod.to_json(out), sort_keys=True).encode())
    for tree in INPUT_TREES:
        _tree_digest(h, ROOT / tree)
    return h.hexdigest()


def units_for(out: outputsmod.Outputs, node: str) -> list[str]:
    spec_node = out.spec.node(node)
    units = list(UNITS_EVERY_NODE)
    for role, names in UNITS_BY_ROLE.items():
        if spec_node.has(role):
            units += [n for n in names if n != "nginx" or out.spec.sni_split]
    if spec_node.has(Role.AGENT) and out.spec.recording:
        units += RECORDING_UNITS
    return units


def state_script(units: list[str]) -> str:
    """Shell that prints the node's managed state, deterministically; its sha256 is the actual digest."""
    q = " ".join(shlex.quote(p) for p in MANAGED_PATHS)
    skip = " ".join(f"! -path {shlex.quote(p)}" for p in VOLATILE)
    return (
        f"find {q} -xdev \\( -type f -o -type l -o -type d \\) {skip} -printf '%p %m %u %g %l\\n' 2>/dev/null "
        "| LC_ALL=C sort; "
        f"find {q} -xdev -type f {skip} -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum; "
        f"systemctl show -p Id,ActiveState,SubState,UnitFileState {' '.join(shlex.quote(u) for u in units)} "
        "2>/dev/null; "
        f"dpkg-query -W {' '.join(PACKAGES)} 2>/dev/null; "
        "nft list table inet voicestack 2>/dev/null"
    )


def probe_command(units: list[str]) -> str:
    """One command: the recorded state line, then the fresh actual digest."""
    return (f"cat {STATE_FILE} 2>/dev/null || echo '{{}}'; echo; "
            f"( {state_script(units)} ) | sha256sum | cut -d' ' -f1")


def record_command(units: list[str], desired: str) -> str:
    """After a full converge: store the desired digest and the node's actual digest (root only)."""
    return (f"umask 077; mkdir -p {shlex.quote(str(Path(STATE_FILE).parent))}; "
            f"a=$( ( {state_script(units)} ) | sha256sum | cut -d' ' -f1 ); "
            f"printf '{{\"desired\": \"%s\", \"actual\": \"%s\"}}\\n' {shlex.quote(desired)} \"$a\" "
            f"> {STATE_FILE}.new && mv -f {STATE_FILE}.new {STATE_FILE}")


def ssh_argv(out: outputsmod.Outputs, node: outputsmod.NodeOut, command: str) -> list[str]:
    known = out.deploy.known_hosts or str(out.paths.known_hosts)
    strict = "yes" if out.deploy.ssh_strict_host_key_checking == "yes" else "accept-new"
    return ["ssh", "-i", node.ssh_key, "-p", str(node.ssh_port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            "-o", f"UserKnownHostsFile={known}", "-o", f"StrictHostKeyChecking={strict}", "-o", "LogLevel=ERROR",
            f"{node.ssh_user}@{node.public_ip}", command]


@dataclass(frozen=True)
class NodeCheck:
    node: str
    clean: bool
    why: str


def check_node(out: outputsmod.Outputs, node: outputsmod.NodeOut) -> NodeCheck:
    desired = desired_digest(out, node.name)
    try:
        proc = subprocess.run(ssh_argv(out, node, probe_command(units_for(out, node.name))), capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return NodeCheck(node.name, False, "no answer within 30 s")
    if proc.returncode != 0:
        return NodeCheck(node.name, False, f"ssh failed ({proc.stderr.strip()[:200] or proc.returncode})")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        recorded = json.loads(lines[0]) if lines else {}
    except ValueError:
        recorded = {}
    actual = lines[-1].strip() if len(lines) > 1 else ""
    if not recorded:
        return NodeCheck(node.name, False, "no converge recorded yet")
    if recorded.get("desired") != desired:
        return NodeCheck(node.name, False, "the deploy's inputs changed since the last converge")
    if recorded.get("actual") != actual:
        return NodeCheck(node.name, False, "the node's state changed since the last converge")
    return NodeCheck(node.name, True, "unchanged")


def check(out: outputsmod.Outputs, limit: tuple[str, ...] = ()) -> list[NodeCheck]:
    """One SSH per node, all at once."""
    nodes = [n for n in out.nodes if not limit or n.name in limit]
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(lambda n: check_node(out, n), nodes))


def record(out: outputsmod.Outputs, limit: tuple[str, ...] = ()) -> list[str]:
    """After a full converge of every node: record its state; the nodes where that failed."""
    nodes = [n for n in out.nodes if not limit or n.name in limit]

    def one(node: outputsmod.NodeOut) -> str | None:
        cmd = record_command(units_for(out, node.name), desired_digest(out, node.name))
        proc = subprocess.run(ssh_argv(out, node, cmd), capture_output=True, text=True, timeout=60)
        return None if proc.returncode == 0 else node.name

    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return [n for n in pool.map(one, nodes) if n]
