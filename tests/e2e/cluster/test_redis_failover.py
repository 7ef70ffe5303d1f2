"""A three-node cluster loses its Redis primary: Sentinel promotes a replica, new calls succeed,
the old primary rejoins as a replica by itself, and a deploy afterwards changes nothing.

The package's three-node cluster (tests/e2e/cluster/conftest.py: `e2ecluster`, behind the emulated NAT;
run together with test_cross_node, that one runs the whole verify suite on it first), then
redis-server is stopped on
the node the Sentinels name as the primary. Prints the failover figures (stop -> Sentinel's
switch, stop -> first successful new call); they are figures, not pass/fail.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from deploy.tasks import redis
from deploy.tasks._facts import RedisPrimary, redis_cli
from infra import outputs as outputsmod
from infra import verify as infra_verify
from infra.probes.roundtrip import round_trips
from tests.conftest import wait_until
from tests.e2e import envs

ENV = envs.CLUSTER_ENV
NODES = envs.CLUSTER_NODES
ROOT = Path(__file__).resolve().parents[2]
PROMOTION_DEADLINE_S = 60
CALL_DEADLINE_S = 240
REJOIN_DEADLINE_S = 120
#: What one test leaves for the next (the tests of this module run in order on one cluster).
STATE: dict[str, Any] = {}

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(nat_cluster):
    return nat_cluster


@pytest.fixture(scope="module")
def out(env) -> outputsmod.Outputs:
    return outputsmod.read(ENV)


def on(env, out: outputsmod.Outputs, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    from infra.local import machines
    return machines.ssh(env.names, out.node(name).public_ip, command, check=check, timeout=60)


def private_ips(out: outputsmod.Outputs) -> dict[str, str]:
    return {n.name: str(n.private_ip or out.spec.node(n.name).private_ip) for n in out.nodes}


def primary_seen_from(env, out: outputsmod.Outputs, name: str, ask: list[str]) -> dict[str, Any]:
    """The deploy's own fact (RedisPrimary), run on node `name`, asking the Sentinels at `ask`."""
    fact = RedisPrimary()
    proc = on(env, out, name, fact.command(sentinels=tuple(ask), port=out.spec.port("redis-sentinel").start,
                                           master=redis.MASTER_NAME, auth_file=redis.SENTINEL_SEED), check=False)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return fact.process(lines) if lines else fact.default()


def replication(env, out: outputsmod.Outputs, name: str) -> dict[str, str]:
    cmd = redis_cli(redis.REDIS_SEED, private_ips(out)[name], out.spec.port("redis").start, "INFO", "replication")
    reply = on(env, out, name, cmd, check=False).stdout
    return dict(line.strip().split(":", 1) for line in reply.splitlines() if ":" in line)


def journal_time(env, out: outputsmod.Outputs, name: str, unit: str, pattern: str) -> float | None:
    """Epoch seconds of the last journal line of `unit` on `name` that contains `pattern`."""
    proc = on(env, out, name, f"journalctl -u {unit} -b --no-pager -o short-unix | grep -F -- {pattern!r} | tail -n1",
              check=False)
    words = proc.stdout.split()
    return float(words[0]) if words else None


def verify(*select: str) -> subprocess.CompletedProcess[str]:
    return infra_verify.run(ENV, *select, timeout=1800)


def test_02_stopping_the_primary_promotes_a_replica_and_new_calls_succeed(env, out) -> None:
    ips = private_ips(out)
    by_ip = {ip: name for name, ip in ips.items()}
    seen = primary_seen_from(env, out, out.nodes[0].name, list(ips.values()))
    assert seen["primary"], f"no primary before the test: {seen}"
    old = by_ip[seen["primary"].rsplit(":", 1)[0]]
    survivors = [n for n in ips if n != old]
    baseline_t0 = time.monotonic()
    baseline = round_trips(out, 1, label="redis-baseline")
    baseline_s = time.monotonic() - baseline_t0
    assert baseline[0]["ok"], f"a call failed before anything was broken: {baseline}"

    on(env, out, old, "systemctl stop redis-server.service")
    stopped_wall, stopped = time.time(), time.monotonic()
    stopped_at = journal_time(env, out, old, "redis-server.service", "Stopped") or stopped_wall

    attempts: list[dict[str, Any]] = []
    while time.monotonic() - stopped < CALL_DEADLINE_S:
        started = time.monotonic() - stopped
        result = round_trips(out, 1, label="redis-failover", timeout=45)[0]
        attempts.append({**result, "started_s": started, "ended_s": time.monotonic() - stopped})
        if result["ok"]:
            break
    first_ok = next((a for a in attempts if a["ok"]), None)

    after = primary_seen_from(env, out, survivors[0], [ips[n] for n in survivors])
    switched = journal_time(env, out, survivors[0], "redis-sentinel.service", "+switch-master")
    sdown = journal_time(env, out, survivors[0], "redis-sentinel.service", "+sdown master")
    print("Redis failover on a three-node cluster (redis-server stopped on the primary "
          f"{old}; down-after {redis.DOWN_AFTER_MS} ms):")
    print(f"  Sentinel +sdown after      {sdown - stopped_at:6.2f} s" if sdown else "  Sentinel +sdown: not logged")
    print(f"  Sentinel +switch-master    {switched - stopped_at:6.2f} s" if switched else "  no +switch-master")
    for a in attempts:
        detail = (f"ok, agent joined in {a['agent_join_s']:.2f} s, voice-to-voice {a['latency_s']:.2f} s" if a["ok"]
                  else a.get("error", "")[:120])
        print(f"  call started {a['started_s']:6.2f} s, ended {a['ended_s']:6.2f} s: {detail}")
    if first_ok:
        b = baseline[0]
        print(f"  first successful new call ended {first_ok['ended_s']:.2f} s after the stop (a healthy call "
              f"before it: {baseline_s:.2f} s, client start included; agent joined in {b['agent_join_s']:.2f} s, "
              f"voice-to-voice {b['latency_s']:.2f} s)")
    assert first_ok, f"no new call succeeded within {CALL_DEADLINE_S} s of the stop: {attempts}"
    assert after["primary"] and after["agreed"], f"the surviving Sentinels name no primary: {after}"
    new = by_ip[after["primary"].rsplit(":", 1)[0]]
    assert new != old and replication(env, out, new).get("role") == "master"
    STATE.update(old=old, new=new)


def test_03_the_old_primary_rejoins_as_a_replica_without_an_operator(env, out) -> None:
    assert "old" in STATE, "runs after the failover test"
    old, new = STATE["old"], STATE["new"]
    new_ip = private_ips(out)[new]
    on(env, out, old, "systemctl start redis-server.service")
    t0 = time.monotonic()
    # Its file still names no primary (the Sentinels could not reach it to rewrite it); they convert it.

    def follows_new() -> bool:
        r = replication(env, out, old)
        return (r.get("role"), r.get("master_host"), r.get("master_link_status")) == ("slave", new_ip, "up")

    wait_until(follows_new, REJOIN_DEADLINE_S, f"{old} rejoining as a replica of {new}", interval=1.0)
    print(f"old primary {old} is a replica of {new} again {time.monotonic() - t0:.1f}s after its start")
    proc = verify("redis_", "host_01", "host_02")
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_04_a_deploy_after_the_failover_changes_nothing(env, out) -> None:
    assert "new" in STATE, "runs after the failover"
    t0 = time.monotonic()
    result = envs.deploy(ENV, timeout=1800)
    print(f"deploy after the failover: {time.monotonic() - t0:.1f}s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    changed = json.loads(outputsmod.EnvPaths(ENV).deploy_last.read_text())["changed"]
    assert changed == {}, changed
    # And the cluster still has the promoted node as its primary: the deploy did not put node-1 back.
    seen = primary_seen_from(env, out, out.nodes[0].name, list(private_ips(out).values()))
    assert seen["primary"] == f"{private_ips(out)[STATE['new']]}:{out.spec.port('redis').start}", seen
