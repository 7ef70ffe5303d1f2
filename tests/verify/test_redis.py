"""Redis with Sentinel on a cluster's nodes (testinfra over SSH; the ports are private, so the checks
run on the nodes): one primary that every Sentinel names, replicas linked to it, a failover
possible, passwords required, dangerous commands off, files as Debian's units need them.
Whether the ports are closed from the internet is net_03 (test_outside.py), from the spec."""
from __future__ import annotations

import pytest

from deploy.tasks import redis
from deploy.tasks._facts import redis_cli
from infra.outputs import Outputs
from infra.spec import EnvSpec, Role
from tests.conftest import wait_until
from tests.verify.test_hosts import hosts  # noqa: F401 - the SSH connections fixture

REPLICA_DISCOVERY_S = 30  # two of Sentinel's 10 s INFO refreshes, and slack
FIX = "make deploy; on the node: journalctl -u redis-server -u redis-sentinel"


@pytest.fixture(scope="module")
def redis_hosts(hosts, spec: EnvSpec, outputs: Outputs):  # noqa: F811 - the imported fixture
    if not spec.redis_nodes:
        pytest.skip("one node: LiveKit keeps its state in memory, there is no Redis")
    private = {n.name: n.private_ip or spec.node(n.name).private_ip for n in outputs.nodes}
    return [(node, host, private[node.name]) for node, host in hosts.values() if Role.REDIS.value in node.roles]


def _data(host, ip: str, spec: EnvSpec, *args: str) -> str:
    return host.run(redis_cli(redis.REDIS_SEED, ip, spec.port("redis").start, *args)).stdout.strip()


def _sentinel(host, spec: EnvSpec, *args: str) -> str:
    return host.run(redis_cli(redis.SENTINEL_SEED, "127.0.0.1", spec.port("redis-sentinel").start, *args)).stdout.strip()


def _sentinel_master(host, spec: EnvSpec) -> dict[str, str]:
    words = _sentinel(host, spec, "SENTINEL", "MASTER", redis.MASTER_NAME).splitlines()
    return dict(zip(words[0::2], words[1::2]))


def _replication(host, ip: str, spec: EnvSpec) -> dict[str, str]:
    reply = _data(host, ip, spec, "INFO", "replication")
    return dict(line.strip().split(":", 1) for line in reply.splitlines() if ":" in line)


def test_redis_01_one_primary_named_by_every_sentinel_and_replicas_linked(redis_hosts, spec: EnvSpec) -> None:
    named = {node.name: _sentinel(host, spec, "SENTINEL", "get-master-addr-by-name", redis.MASTER_NAME).split()
             for node, host, _ in redis_hosts}
    answers = {" ".join(v) for v in named.values()}
    assert len(answers) == 1, f"the Sentinels disagree on the primary: {named}; {FIX}"
    primary_ip = next(iter(named.values()))[0]
    ips = {ip for _, _, ip in redis_hosts}
    assert primary_ip in ips, f"the Sentinels name {primary_ip}, which is not a node ({sorted(ips)}): {FIX}"
    problems = []
    for node, host, ip in redis_hosts:
        info = _replication(host, ip, spec)
        if ip == primary_ip:
            if info.get("role") != "master" or info.get("connected_slaves") != str(len(redis_hosts) - 1):
                problems.append(f"{node.name} (primary) has role={info.get('role')} "
                                f"connected_slaves={info.get('connected_slaves')}, want {len(redis_hosts) - 1}")
        elif (info.get("role"), info.get("master_host"), info.get("master_link_status")) != ("slave", primary_ip, "up"):
            problems.append(f"{node.name} has role={info.get('role')} master={info.get('master_host')} "
                            f"link={info.get('master_link_status')}, want a replica of {primary_ip} with its link up")
    assert not problems, "; ".join(problems) + f" — {FIX}"


def test_redis_02_sentinels_can_fail_over_with_the_deploys_settings(redis_hosts, spec: EnvSpec) -> None:
    want = {"quorum": str(spec.redis_quorum), "down-after-milliseconds": str(redis.DOWN_AFTER_MS),
            "failover-timeout": str(redis.FAILOVER_TIMEOUT_MS)}
    replicas = str(len(redis_hosts) - 1)
    problems = []
    for node, host, _ in redis_hosts:
        quorum = _sentinel(host, spec, "SENTINEL", "ckquorum", redis.MASTER_NAME)
        if not quorum.startswith(f"OK {len(redis_hosts)} usable Sentinels"):
            problems.append(f"{node.name}: SENTINEL CKQUORUM says {quorum!r}")
        got = _sentinel_master(host, spec)
        if {k: got.get(k) for k in want} != want:
            problems.append(f"{node.name}: Sentinel runs with {({k: got.get(k) for k in want})}, the deploy sets {want}")
        # A Sentinel reconfigures after a failover only the replicas it knows (it learns them from
        # the primary's INFO every 10 s, so a just-deployed cluster may need that long).
        try:
            wait_until(lambda host=host: _sentinel_master(host, spec).get("num-slaves") == replicas,
                       REPLICA_DISCOVERY_S, f"the Sentinel on {node.name} knowing {replicas} replicas", interval=1)
        except TimeoutError:
            problems.append(f"{node.name}: Sentinel knows {_sentinel_master(host, spec).get('num-slaves')} replicas, "
                            f"want {replicas}: a failover would leave the others on the dead primary")
    assert not problems, "; ".join(problems) + f" — {FIX}"


def test_redis_03_redis_and_sentinel_refuse_clients_without_the_password(redis_hosts, spec: EnvSpec) -> None:
    open_ = []
    for node, host, ip in redis_hosts:
        for name in ("redis", "redis-sentinel"):
            port = spec.port(name).start
            reply = host.run(f"env -u REDISCLI_AUTH timeout 5 redis-cli -h {ip} -p {port} PING").stdout
            if "NOAUTH" not in reply:
                open_.append(f"{name} {ip}:{port} on {node.name} answered {reply.strip()!r}")
    assert not open_, "no password needed: " + "; ".join(open_) + f" — {FIX}"


def test_redis_04_config_and_flush_commands_are_not_available_to_clients(redis_hosts, spec: EnvSpec) -> None:
    for node, host, ip in redis_hosts:
        for command in (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("DEBUG", "SLEEP", "0")):
            reply = _data(host, ip, spec, *command)
            assert "unknown command" in reply, (f"{' '.join(command)} on {node.name} answered {reply!r}: "
                                                "the rename-command lines are missing from redis.conf; " + FIX)


def test_redis_05_files_owned_by_redis_writable_directory_secrets_private(redis_hosts) -> None:
    expect = [  # path, owner, group, mode
        ("/etc/redis/redis.conf", "redis", "redis", 0o640),
        ("/etc/redis/sentinel.conf", "redis", "redis", 0o640),
        (redis.REDIS_SEED, "root", "root", 0o600),
        (redis.SENTINEL_SEED, "root", "root", 0o600),
        (redis.SEED_DIR, "root", "root", 0o700),
    ]
    problems = []
    for node, host, _ in redis_hosts:
        for path, owner, group, mode in expect:
            f = host.file(path)
            if not f.exists or (f.user, f.group, f.mode) != (owner, group, mode):
                problems.append(f"{path} on {node.name} is "
                                f"{oct(f.mode) + ' ' + f.user + ':' + f.group if f.exists else 'missing'}, "
                                f"want {oct(mode)} {owner}:{group}")
        # Redis and Sentinel rewrite their files by a temporary file and a rename in /etc/redis.
        d = host.file("/etc/redis")
        if (d.user, d.group) != ("redis", "redis") or not d.mode & 0o020:
            problems.append(f"/etc/redis on {node.name} is {oct(d.mode)} {d.user}:{d.group}: Sentinel cannot save "
                            "its state; want redis:redis with group write (Debian: 2770)")
    assert not problems, "; ".join(problems)
