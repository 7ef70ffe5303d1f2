"""Redis replication with Sentinel on loopback, from the project's own templates and variables:
the harness of tests/unit/test_redis_sentinel.py and bench/bench_redis_failover.py.

Each "node" is a loopback address of its own (127.77.0.10, .11, .12: Linux answers all of 127/8
on lo) running the Debian redis-server and redis-sentinel with the files the deploy writes (seed
from the templates, head lines from deploy/tasks/redis.py). What a shared host forces is changed
and nothing else: no 127.0.0.1 bind (three instances would collide on it), a free Sentinel port
instead of 26379, and data directories under the test's temporary directory.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.inventory import NodeVars, node_vars
from deploy.render import render
from deploy.tasks import redis
from tests.conftest import free_port, wait_until
from tests.unit.support import outputs_for, spec_of

PRIVATE_NETWORK = "127.77.0.0/24"
BINARIES = ("redis-server", "redis-sentinel", "redis-cli")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


@dataclass
class Daemon:
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Node:
    vs: NodeVars
    ip: str
    dir: Path
    redis: Daemon
    sentinel: Daemon
    redis_conf: Path
    sentinel_conf: Path


@dataclass
class LoopbackCluster:
    tmp: Path
    count: int = 3
    nodes: list[Node] = field(default_factory=list)
    redis_port: int = 0
    sentinel_port: int = 0
    password: str = ""
    sentinel_password: str = ""
    config_command: str = ""

    def write(self) -> None:
        """Render every node's redis.conf and sentinel.conf the way the deploy does on first converge."""
        self.redis_port, self.sentinel_port = free_port(), free_port()
        spec = spec_of(self.count, privateNetwork=PRIVATE_NETWORK, redisPort=self.redis_port)
        for name, vs in node_vars(outputs_for(spec)).items():
            ip = str(vs.private_ip)
            work = self.tmp / name
            work.mkdir(parents=True, exist_ok=True)
            rv = {**redis.redis_vars(vs), "bind": [ip], "dir": str(work)}
            sv = {**redis.sentinel_vars(vs), "bind": [ip], "port": self.sentinel_port, "dir": str(work)}
            primary = redis.seed_primary(vs)
            redis_conf, sentinel_conf = work / "redis.conf", work / "sentinel.conf"
            redis_conf.write_text(redis.compose(redis.redis_head(primary, ip), render("redis", "redis.conf.j2", rv)))
            sentinel_conf.write_text(redis.compose(redis.sentinel_head(primary, redis.sentinel_tunables(vs)),
                                                   render("redis", "sentinel.conf.j2", sv)))
            self.nodes.append(Node(vs, ip, work, Daemon(["redis-server", str(redis_conf)], work / "redis.log"),
                                   Daemon(["redis-sentinel", str(sentinel_conf)], work / "sentinel.log"),
                                   redis_conf, sentinel_conf))
        first = self.nodes[0].vs.secrets
        self.password, self.sentinel_password = first.redis_password, first.redis_sentinel_password
        self.config_command = first.redis_config_command

    # ---- clients ------------------------------------------------------------------------------
    def cli(self, ip: str, port: int, *args: str, auth: str | None = "redis") -> str:
        """redis-cli's reply (stdout, stripped); the password goes through the environment."""
        env = dict(os.environ)
        env.pop("REDISCLI_AUTH", None)
        if auth is not None:
            env["REDISCLI_AUTH"] = self.password if auth == "redis" else self.sentinel_password
        proc = subprocess.run(["redis-cli", "--no-auth-warning", "-h", ip, "-p", str(port), *args], env=env,
                              capture_output=True, text=True, timeout=10)
        return (proc.stdout + proc.stderr).strip()

    def data(self, node: Node, *args: str, auth: str | None = "redis") -> str:
        return self.cli(node.ip, self.redis_port, *args, auth=auth)

    def ask_sentinel(self, node: Node, *args: str, auth: str | None = "sentinel") -> str:
        return self.cli(node.ip, self.sentinel_port, *args, auth=auth)

    def primary_by(self, node: Node) -> str | None:
        """ip:port of the primary according to this node's Sentinel."""
        words = self.ask_sentinel(node, "SENTINEL", "get-master-addr-by-name", redis.MASTER_NAME).split()
        return f"{words[0]}:{words[1]}" if len(words) == 2 and words[1].isdigit() else None

    def sentinel_master(self, node: Node) -> dict[str, str]:
        """SENTINEL MASTER as a dict (redis-cli prints the reply's keys and values on alternate lines)."""
        lines = self.ask_sentinel(node, "SENTINEL", "master", redis.MASTER_NAME).splitlines()
        return dict(zip(lines[0::2], lines[1::2]))

    def replication(self, node: Node) -> dict[str, str]:
        reply = self.data(node, "INFO", "replication")
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)

    def node_at(self, address: str) -> Node:
        return next(n for n in self.nodes if f"{n.ip}:{self.redis_port}" == address)

    def write_via_sentinel(self, key: str, value: str, sentinels: list[Node] | None = None,
                           replicas: int = 0, ack_ms: int = 5_000) -> str | None:
        """What LiveKit's client does: ask the Sentinels for the primary (first answer wins), write there.
        With `replicas`, also wait (Redis WAIT) until that many replicas acknowledged the write:
        replication is asynchronous, so a primary killed right after a plain SET may take the write
        with it. Returns the primary written to, None if no write succeeded (or was not acknowledged)."""
        for s in sentinels or self.nodes:
            if s.sentinel.proc is None or s.sentinel.proc.poll() is not None:
                continue
            primary = self.primary_by(s)
            if primary is None:
                continue
            ip, port = primary.rsplit(":", 1)
            if self.cli(ip, int(port), "SET", key, value) != "OK":
                return None
            acked = self.cli(ip, int(port), "WAIT", str(replicas), str(ack_ms)) if replicas else ""
            if replicas and not (acked.isdigit() and int(acked) >= replicas):
                return None
            return primary
        return None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, ready_s: float = 60) -> None:
        for n in self.nodes:
            n.redis.start()
        for n in self.nodes:
            wait_until(lambda n=n: self.data(n, "PING") == "PONG", ready_s, f"redis-server on {n.ip}", n.redis.proc)
        for n in self.nodes:
            n.sentinel.start()
        # Ready when every Sentinel sees the others and both replicas are linked to the primary.
        for n in self.nodes:
            wait_until(lambda n=n: self.ask_sentinel(n, "SENTINEL", "ckquorum", redis.MASTER_NAME).startswith(
                f"OK {self.count} usable"), ready_s, f"Sentinel on {n.ip} seeing all {self.count}", n.sentinel.proc,
                interval=0.2)
        for n in self.nodes[1:]:
            wait_until(lambda n=n: self.replication(n).get("master_link_status") == "up", ready_s,
                       f"replica {n.ip} linked to the primary", n.redis.proc, interval=0.2)
        # ... and every Sentinel knows both replicas. Sentinel learns them from the primary's INFO,
        # refreshed every 10 s; one that missed a replica never reconfigures it after a failover
        # (CI once killed the primary 8 s after start, and that replica stayed on the dead one).
        for n in self.nodes:
            wait_until(lambda n=n: self.sentinel_master(n).get("num-slaves") == str(self.count - 1), ready_s,
                       f"Sentinel on {n.ip} knowing {self.count - 1} replicas", n.sentinel.proc, interval=0.2)

    def stop(self) -> None:
        for n in self.nodes:
            n.sentinel.stop()
            n.redis.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for n in self.nodes for p in (n.redis.log, n.sentinel.log)
                         if p.is_file())


def failover(cluster: LoopbackCluster, deadline_s: float = 30) -> tuple[Node, Node, float]:
    """kill -9 the primary; (old primary, new primary, seconds until a write through the surviving
    Sentinels succeeds on another node)."""
    old = cluster.node_at(cluster.primary_by(cluster.nodes[0]) or "")
    survivors = [n for n in cluster.nodes if n is not old]
    # A replica still in its (re)sync cannot be promoted: kill the primary only once both are linked.
    for n in survivors:
        wait_until(lambda n=n: cluster.replication(n).get("master_link_status") == "up", deadline_s,
                   f"replica {n.ip} linked to the primary before the kill")
    old.redis.kill()
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        wrote = cluster.write_via_sentinel("failover-probe", str(t0), survivors)
        if wrote is not None and wrote != f"{old.ip}:{cluster.redis_port}":
            return old, cluster.node_at(wrote), time.monotonic() - t0
        time.sleep(0.05)  # poll interval of a deadline loop
    raise TimeoutError(f"no write through the Sentinels reached a new primary within {deadline_s:.0f} s "
                       f"after killing {old.ip}; logs:\n{cluster.logs()}")
