"""What the node under load spends, read over SSH from the outputs' nodes[] entry.

    node = Node.from_outputs(outputs)          # the first node with the livekit role
    snap = node.snapshot()                     # cpu seconds / memory per unit, UDP errors, net bytes
    cores = node.cores_between(a, b, "livekit")

Per unit it prefers the unit's cgroup (cgroup v2: cpu.stat usage_usec, memory.current), as a
cloud VPS with systemd has; where the controllers are not there (the local machines run in
systemd-nspawn on a cgroup-v1 host) it sums process accounting over the unit's processes:
utime+stime plus the reaped children's cutime+cstime (the agent's job processes), and PSS
(shared pages counted once across the forked job processes). It also reads LiveKit's own
Prometheus counters on loopback and the kernel's UDP counters (receive-buffer overflows are
where a UDP-buffer tuning shows).
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from infra.outputs import NodeOut, Outputs

UNITS = ("livekit", "voicestack-agent", "voicestack-speech", "caddy", "nginx", "coturn")

# Runs on the node (python3 is there for the agent services); prints one JSON object.
PROBE = r'''
import json, os, re, time, urllib.request
UNITS = %(units)r
PROM = %(prom)r
TICK = os.sysconf("SC_CLK_TCK")

def read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None

def unit_dir(unit):
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):
        d = f"{base}/system.slice/{unit}.service"
        if os.path.isdir(d):
            yield d

def pids(unit):
    for d in unit_dir(unit):
        text = read(f"{d}/cgroup.procs")
        if text and text.split():
            return [int(p) for p in text.split()]
    return []

def proc_cpu(pid):
    text = read(f"/proc/{pid}/stat")
    if not text:
        return 0.0
    f = text.rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / TICK  # utime stime cutime cstime

def proc_pss(pid):
    text = read(f"/proc/{pid}/smaps_rollup") or ""
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0

def unit_cpu(u):
    ps = pids(u)
    out = {"procs": len(ps), "source": "proc", "pids": ps}
    for d in unit_dir(u):
        stat = read(f"{d}/cpu.stat")
        if stat and read(f"{d}/memory.current"):
            usage = dict(l.split() for l in stat.splitlines())
            out.update(cpu_s=int(usage["usage_usec"]) / 1e6, source="cgroup", cgroup=d)
            return out
    out["cpu_s"] = sum(proc_cpu(p) for p in ps)
    return out

def unit_mem(out):
    if out["source"] == "cgroup":
        out["mem_bytes"] = int(read(f"{out.pop('cgroup')}/memory.current") or 0)
    else:
        out["mem_bytes"] = sum(proc_pss(p) for p in out["pids"])
    out.pop("pids", None)
    return out

def prom():
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{PROM}/metrics", timeout=3).read().decode()
    except OSError:
        return {}
    want = ("livekit_room_total", "livekit_participant_total", "livekit_track_published_total",
            "livekit_track_subscribed_total", "livekit_node_packet_total", "livekit_packet_total",
            "livekit_packet_loss_total", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes",
            "livekit_forward_latency", "livekit_forward_jitter")
    out = {}
    for line in body.splitlines():
        if line.startswith(want):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0]
            if key.endswith("_bucket"):
                continue
            for m in re.finditer(r'[{,](type|direction|kind)="([^"]*)"', name):
                key += "." + m.group(2)
            try:
                out[key] = out.get(key, 0.0) + float(value)
            except ValueError:
                pass
    return out

def udp():
    lines = [l.split() for l in (read("/proc/net/snmp") or "").splitlines() if l.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) == 2 else {}

def net():
    out = {}
    for line in (read("/proc/net/dev") or "").splitlines()[2:]:
        name, data = line.split(":", 1)
        f = data.split()
        if name.strip() != "lo":
            out[name.strip()] = [int(f[0]), int(f[8]), int(f[1]), int(f[9])]
    return out

# The counters rates are taken from (CPU, bytes, UDP) are read together with the clock, first;
# the slower reads (PSS walks page tables, the Prometheus scrape) come after.
t = time.monotonic()
units = {u: unit_cpu(u) for u in UNITS}
net_now, udp_now = net(), udp()
print(json.dumps({"t": t, "read_s": time.monotonic() - t, "units": {u: unit_mem(v) for u, v in units.items()},
                  "prom": prom(), "udp": udp_now, "net": net_now, "nproc": os.cpu_count(),
                  "rmem_max": int((read("/proc/sys/net/core/rmem_max") or "0").strip() or 0)}))
'''


class NodeError(Exception):
    pass


@dataclass(frozen=True)
class Node:
    """The SSH address of one node and how to reach it (outputs.json nodes[])."""

    name: str
    address: str
    user: str
    key: str
    port: int
    known_hosts: str | None
    prometheus_port: int = 6789

    @classmethod
    def from_outputs(cls, outputs: Outputs, role: str = "livekit", prometheus_port: int | None = None) -> "Node":
        """The first node with `role`; LiveKit's Prometheus port comes from the spec unless given."""
        node: NodeOut | None = next((n for n in outputs.nodes if role in n.roles), None)
        if node is None:
            raise NodeError(f"no node of {outputs.env} has the {role} role: roles are "
                            f"{[n.roles for n in outputs.nodes]}")
        known = outputs.deploy.known_hosts or str(outputs.paths.known_hosts)
        port = prometheus_port or outputs.spec.port("livekit-prometheus").start
        return cls(node.name, node.public_ip, node.ssh_user, node.ssh_key, node.ssh_port, known, port)

    def ssh_argv(self, *remote: str) -> list[str]:
        # One multiplexed connection: a probe every few seconds must not pay a handshake each
        # time on a node whose CPU the load is saturating.
        argv = ["ssh", "-i", self.key, "-p", str(self.port), "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-o", "ControlMaster=auto",
                "-o", f"ControlPath=/tmp/voicestack-bench-{os.getuid()}-%C", "-o", "ControlPersist=300"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        return [*argv, f"{self.user}@{self.address}", *remote]

    def run(self, script: str, stdin: str | None = None, timeout: float = 60) -> str:
        try:
            proc = subprocess.run(self.ssh_argv(script), input=stdin, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise NodeError(f"failed to run {script!r} on {self.name} ({self.address}): no answer within "
                            f"{timeout:.0f} s — the node may be saturated") from exc
        if proc.returncode != 0:
            raise NodeError(f"failed to run {script!r} on {self.name} ({self.address}): exit "
                            f"{proc.returncode}: {proc.stderr.strip()[-500:]} — check SSH with: "
                            f"{' '.join(self.ssh_argv('true'))}")
        return proc.stdout

    def snapshot(self, attempts: int = 3) -> dict[str, Any]:
        for attempt in range(attempts):
            try:
                out = self.run("python3 -", stdin=PROBE % {"units": UNITS, "prom": self.prometheus_port})
                return json.loads(out.strip().splitlines()[-1])
            except NodeError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def pin(self, unit: str, cpus: str | None) -> str:
        """Set the CPU affinity of every thread of `unit` (None: all CPUs); returns the new list."""
        target = cpus or "0-$(($(nproc --all)-1))"
        script = (f"set -e; pids=$(systemctl show -p MainPID --value {unit}); test \"$pids\" != 0; "
                  f"for t in /proc/$pids/task/*; do taskset -p -c {target} ${{t##*/}} >/dev/null; done; "
                  f"taskset -p -c $pids | sed 's/.*: //'")
        return self.run(script).strip()

    def env_value(self, key: str, path: str = "/etc/voicestack/agent.env") -> str | None:
        """One non-secret setting of the agent's environment file (only that line is read)."""
        out = self.run(f"grep -E '^{key}=' {path} || true").strip()
        return out.split("=", 1)[1] if out else None

    def journal_lines(self, unit: str, since: str, grep: str) -> list[str]:
        out = self.run(f"journalctl -u {unit} --since '{since}' --no-pager -o cat | grep -F -- '{grep}' || true",
                       timeout=60)
        return [line for line in out.splitlines() if line.strip()]

    def clock(self) -> str:
        return self.run("date -u '+%Y-%m-%d %H:%M:%S'").strip()


def cores(a: dict[str, Any], b: dict[str, Any], unit: str) -> float:
    """CPU cores the unit used between two snapshots."""
    dt = b["t"] - a["t"]
    return (b["units"][unit]["cpu_s"] - a["units"][unit]["cpu_s"]) / dt if dt > 0 else 0.0


def delta(a: dict[str, Any], b: dict[str, Any], section: str, key: str) -> float:
    return float(b[section].get(key, 0)) - float(a[section].get(key, 0))


def net_bytes(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """(rx, tx) bytes per second over every non-loopback interface of the node."""
    dt = b["t"] - a["t"]
    rx = sum(b["net"][i][0] - a["net"][i][0] for i in b["net"] if i in a["net"])
    tx = sum(b["net"][i][1] - a["net"][i][1] for i in b["net"] if i in a["net"])
    return (rx / dt, tx / dt) if dt > 0 else (0.0, 0.0)
