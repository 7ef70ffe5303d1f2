"""Redis for a LiveKit cluster: a primary and replicas with a Sentinel on every node, on the private
network only, passwords required.

Redis and Sentinel rewrite their own files: Sentinel records its id, epochs and the replicas and
Sentinels it found, and reconfigures replication with CONFIG REWRITE on every failover. So the
deploy owns a *seed* per file (SEED_DIR, root only) and writes the live file from it only when the
seed changed (a stamp holds the seed's sha256), putting first the lines that depend on the cluster's
state: `replicaof` / `sentinel monitor` with the CURRENT primary, asked from the Sentinels (the
seed node only when none answers: a cluster being deployed for the first time). Sentinel's
tunables are applied at runtime (SENTINEL SET). A second converge changes nothing, after a
failover too; restarts hang on the stamps, never on the files the daemons rewrite.
"""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from deploy.inventory import DeployInputError, NodeVars
from deploy.tasks._facts import RedisPrimary, SeedState, SentinelMaster, redis_cli
from deploy.tasks._lifecycle import lifecycle, put_dropin
from deploy.tasks._ops import install_packages, put_rendered, service_current, unmask

#: Sentinel's name for the monitored primary (LiveKit's redis.sentinel_master_name).
MASTER_NAME = "voicestack"
CONFIG = "/etc/redis/redis.conf"
SENTINEL_CONFIG = "/etc/redis/sentinel.conf"
SEED_DIR = "/etc/voicestack/redis"
REDIS_SEED = f"{SEED_DIR}/redis.conf.seed"
SENTINEL_SEED = f"{SEED_DIR}/sentinel.conf.seed"
REDIS_STAMP = f"{SEED_DIR}/redis.conf.seeded"
SENTINEL_STAMP = f"{SEED_DIR}/sentinel.conf.seeded"
DATA_DIR = "/var/lib/redis"      # Debian's; the units may write only there and in /etc/redis
REDIS_UNIT = "redis-server.service"
SENTINEL_UNIT = "redis-sentinel.service"

# Failover speed against false alarms. A primary is "down" after DOWN_AFTER_MS without a valid
# reply; a failover then took ~3 s on loopback (research F, bench/bench_redis_failover.py). LiveKit
# marks a node unavailable when its stats (which travel through Redis) are 5 s old, so detection
# must stay well below that. Lower values fail over on a CPU stall or a slow disk of a loaded
# host: each false failover costs every LiveKit node a reconnect, not data (the promoted replica
# holds it). FAILOVER_TIMEOUT_MS bounds one failover attempt; a Sentinel retries a failed one
# after twice that (Sentinel's default is 3 minutes, far too long for a voice service).
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 10000


def _server_vars(vs: NodeVars, port_name: str, password: str) -> dict:
    """What the redis-server and redis-sentinel seeds share: where each listens and what it
    announces (loopback and the port's scope address), its password, where it keeps its state."""
    port = vs.spec.port(port_name)
    address = vs.bind_address(port.scope)
    return {
        "bind": ["127.0.0.1", address],
        "port": port.start,
        "announce_ip": address,
        "password": password,
        "config_command": vs.secrets.redis_config_command,
        "dir": DATA_DIR,
    }


def redis_vars(vs: NodeVars) -> dict:
    """Template variables of the redis.conf seed (pure: used by the task and the tests)."""
    return _server_vars(vs, "redis", vs.secrets.redis_password)


def sentinel_vars(vs: NodeVars) -> dict:
    """Template variables of the sentinel.conf seed (pure: used by the task and the tests)."""
    return {**_server_vars(vs, "redis-sentinel", vs.secrets.redis_sentinel_password),
            "master_name": MASTER_NAME, "master_password": vs.secrets.redis_password}


def sentinel_tunables(vs: NodeVars) -> dict[str, int]:
    """Sentinel settings applied at runtime (SENTINEL SET) as well as written when it is seeded."""
    return {"quorum": vs.spec.redis_quorum, "down-after-milliseconds": DOWN_AFTER_MS,
            "failover-timeout": FAILOVER_TIMEOUT_MS}


def sentinel_addresses(vs: NodeVars) -> list[str]:
    """host:port of every Sentinel (LiveKit's redis.sentinel_addresses)."""
    port = vs.spec.port("redis-sentinel").start
    return [f"{ip}:{port}" for ip in vs.redis_nodes]


def seed_primary(vs: NodeVars) -> str:
    """ip:port of the primary of a cluster no Sentinel knows yet (the spec's seed node)."""
    return f"{vs.redis_nodes[0]}:{vs.spec.port('redis').start}"


def redis_head(primary: str, self_ip: str) -> list[str]:
    """Lines put before the redis.conf seed: a replica follows the current primary."""
    ip, port = primary.rsplit(":", 1)
    return [] if ip == self_ip else [f"replicaof {ip} {port}"]


def sentinel_head(primary: str, tunables: dict[str, int], master: str = MASTER_NAME) -> list[str]:
    """Lines put before the sentinel.conf seed (`monitor` must precede the master's other lines)."""
    ip, port = primary.rsplit(":", 1)
    settings = {k: v for k, v in tunables.items() if k != "quorum"}
    return [f"sentinel monitor {master} {ip} {port} {tunables['quorum']}"] + \
        [f"sentinel {k} {master} {v}" for k, v in settings.items()]


def compose(head: list[str], seed: str) -> str:
    """The live file: head lines, then the seed (what seed_from's shell command writes)."""
    return "".join(f"{line}\n" for line in head) + seed


def current_primary(sentinels: tuple[str, ...], port: int, fallback: str) -> tuple[str | None, str]:
    """(ip:port of the primary the Sentinels agree on, or `fallback` when none answers; an error
    when they disagree). Asked from the node, so it works whatever the operator can reach."""
    found = host.get_fact(RedisPrimary, sentinels=tuple(sentinels), port=port, master=MASTER_NAME,
                          auth_file=SENTINEL_SEED)
    if not found["agreed"]:
        return None, (f"the Sentinels disagree on the Redis primary ({found['answers']}); a failover is "
                      "probably under way: wait a minute and deploy again")
    return found["primary"] or fallback, ""


@operation()
def seed_from(seed: str, dest: str, stamp: str, kind: str, self_ip: str, sentinels: tuple[str, ...],
              sentinel_port: int, fallback: str, tunables: tuple[tuple[str, int], ...] = (),
              user: str = "redis", group: str = "redis", mode: str = "640"):
    """
    Write a file its daemon rewrites (redis.conf, sentinel.conf) from its seed, when the seed changed.

    + seed: the deploy's file on the node, e.g. "/etc/voicestack/redis/redis.conf.seed"
    + dest: the live file, e.g. "/etc/redis/redis.conf"
    + stamp: where the seed's sha256 is kept once dest is written from it
    + kind: "redis" (head: replicaof the current primary) or "sentinel" (head: monitor it)
    + self_ip: this node's private IP (a primary has no replicaof)
    + sentinels / sentinel_port: whom to ask for the current primary
    + fallback: ip:port of the primary when no Sentinel answers (the seed node)
    + tunables: Sentinel's runtime settings, written into a new sentinel.conf

    Example: seed_from(seed=REDIS_SEED, dest=CONFIG, stamp=REDIS_STAMP, kind="redis", self_ip="10.77.0.11",
             sentinels=("10.77.0.10", "10.77.0.11", "10.77.0.12"), sentinel_port=26379, fallback="10.77.0.10:6379")
    """
    if host.get_fact(SeedState, seed=seed, dest=dest, stamp=stamp):
        return
    primary, error = current_primary(sentinels, sentinel_port, fallback)
    if primary is None:
        yield f"echo {shlex.quote(f'{host.name}: not writing {dest}: {error}')} >&2; exit 1"
        return
    head = redis_head(primary, self_ip) if kind == "redis" else sentinel_head(primary, dict(tunables))
    q = shlex.quote
    directory = dest.rsplit("/", 1)[0]
    write_head = f"printf '%s\\n' {' '.join(q(line) for line in head)}; " if head else ""
    # Same directory, then rename: the daemon never reads a half-written file. The stamp is written
    # last, so an interrupted run writes the file again (from the then-current primary).
    yield (f"umask 077; tmp=$(mktemp {q(directory)}/.voicestack.XXXXXX) || exit 1; "
           f"{{ {write_head}cat {q(seed)}; }} > \"$tmp\" && "
           f"chown {q(user)}:{q(group)} \"$tmp\" && chmod {mode} \"$tmp\" && mv -f \"$tmp\" {q(dest)} && "
           f"sha256sum < {q(seed)} | cut -d' ' -f1 > {q(stamp)}")


@operation()
def sentinel_tuned(port: int, tunables: tuple[tuple[str, int], ...]):
    """
    Apply Sentinel settings at runtime (SENTINEL SET also rewrites sentinel.conf) where they differ.

    + port: the local Sentinel's port, e.g. 26379
    + tunables: (name, value) pairs of SENTINEL SET, e.g. (("quorum", 2), ("down-after-milliseconds", 2000))
    """
    running = host.get_fact(SentinelMaster, port=port, master=MASTER_NAME, auth_file=SENTINEL_SEED)
    if not running:
        yield (f"echo 'the Sentinel on 127.0.0.1:{port} does not answer SENTINEL MASTER {MASTER_NAME}: "
               f"journalctl -u {SENTINEL_UNIT} on {host.name}' >&2; exit 1")
        return
    for name, value in tunables:
        if running.get(name) != str(value):
            yield redis_cli(SENTINEL_SEED, "127.0.0.1", port, "SENTINEL", "SET", MASTER_NAME, name, str(value))


@deploy("Install and configure Redis with Sentinel")
def redis():
    vs: NodeVars = host.data.vs
    if not vs.redis_nodes or vs.private_ip not in vs.redis_nodes:
        raise DeployInputError(f"{vs.node.name} has the redis role but is not among the Redis nodes "
                               f"{list(vs.redis_nodes)}; re-run the provisioner (make up)")
    sentinel_port = vs.spec.port("redis-sentinel").start
    tunables = tuple(sentinel_tunables(vs).items())
    ask = {"self_ip": vs.private_ip, "sentinels": vs.redis_nodes, "sentinel_port": sentinel_port,
           "fallback": seed_primary(vs)}

    # The packaged units stay masked until their seeds are in place: Debian's sentinel.conf
    # monitors 127.0.0.1 without a password, and a reboot mid-deploy must not start that.
    install_packages(["redis-server", "redis-sentinel"], name="Install redis-server and redis-sentinel",
                     masked=(REDIS_UNIT, SENTINEL_UNIT))
    files.directory(name=f"Create {SEED_DIR}", path=SEED_DIR, user="root", group="root", mode="700")
    put_rendered(name=f"Render {REDIS_SEED}", service="redis", template="redis.conf.j2", dest=REDIS_SEED,
                 mode="600", variables=redis_vars(vs))
    put_rendered(name=f"Render {SENTINEL_SEED}", service="redis", template="sentinel.conf.j2", dest=SENTINEL_SEED,
                 mode="600", variables=sentinel_vars(vs))
    # Restart policy and boot order of both packaged units (deploy/tasks/_lifecycle.py).
    redis_lc = lifecycle(REDIS_UNIT, binds=tuple(redis_vars(vs)["bind"]))
    sentinel_lc = lifecycle(SENTINEL_UNIT, binds=tuple(sentinel_vars(vs)["bind"]))
    dropins = [put_dropin(redis_lc), put_dropin(sentinel_lc)]
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*dropins))

    seed_from(name=f"Write {CONFIG} from its seed if the seed changed", seed=REDIS_SEED, dest=CONFIG,
              stamp=REDIS_STAMP, kind="redis", **ask)
    unmask(name=f"Unmask {REDIS_UNIT}", service=REDIS_UNIT)
    service_current(name="Restart Redis if it was seeded again or its lifecycle changed", service=REDIS_UNIT,
                    paths=(REDIS_STAMP, redis_lc.dropin))
    systemd.service(name="Enable Redis", service=REDIS_UNIT, enabled=True)

    seed_from(name=f"Write {SENTINEL_CONFIG} from its seed if the seed changed", seed=SENTINEL_SEED,
              dest=SENTINEL_CONFIG, stamp=SENTINEL_STAMP, kind="sentinel", tunables=tunables, **ask)
    unmask(name=f"Unmask {SENTINEL_UNIT}", service=SENTINEL_UNIT)
    service_current(name="Restart Sentinel if it was seeded again or its lifecycle changed", service=SENTINEL_UNIT,
                    paths=(SENTINEL_STAMP, sentinel_lc.dropin))
    systemd.service(name="Enable Sentinel", service=SENTINEL_UNIT, enabled=True)
    sentinel_tuned(name="Apply Sentinel's failover settings", port=sentinel_port, tunables=tunables)
