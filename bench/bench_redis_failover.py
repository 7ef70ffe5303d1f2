"""Benchmark: Redis Sentinel failover with the project's own configuration, on loopback (figures only).

    python bench/bench_redis_failover.py [--rounds 5]

Three redis-server + three redis-sentinel processes rendered from deploy/templates/redis (see
tests/unit/redis_loopback.py; Debian packages redis-server and redis-sentinel, `make deps`). Each
round kills the current primary with SIGKILL and reports the seconds until a write through
Sentinel discovery (what LiveKit's client does) succeeds on the promoted replica, then starts the
old primary again and reports the seconds until it is a linked replica. The figure on a real
cluster, stop -> first successful spoken call, is printed by tests/e2e/cluster/test_redis_failover.py.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.tasks import redis  # noqa: E402
from tests.unit.redis_loopback import LoopbackCluster, failover, missing_binaries  # noqa: E402

REJOIN_DEADLINE_S = 90


def rejoin(cluster: LoopbackCluster, old, new) -> float:
    old.redis.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < REJOIN_DEADLINE_S:
        info = cluster.replication(old)
        if info.get("master_host") == new.ip and info.get("master_link_status") == "up":
            return time.monotonic() - t0
        time.sleep(0.1)  # poll interval of a deadline loop
    raise TimeoutError(f"{old.ip} did not rejoin as a replica of {new.ip} within {REJOIN_DEADLINE_S} s")


def summary(name: str, values: list[float]) -> str:
    return (f"{name}: min {min(values):.2f} s, median {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"({len(values)} rounds)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if missing_binaries():
        print(f"{', '.join(missing_binaries())} missing: run 'make deps'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        cluster = LoopbackCluster(Path(tmp))
        cluster.write()
        try:
            t0 = time.monotonic()
            cluster.start()
            print(f"3 Redis + 3 Sentinels ready in {time.monotonic() - t0:.1f} s "
                  f"(down-after {redis.DOWN_AFTER_MS} ms, failover-timeout {redis.FAILOVER_TIMEOUT_MS} ms, "
                  f"quorum 2)", flush=True)
            failovers, rejoins = [], []
            for i in range(args.rounds):
                old, new, seconds = failover(cluster)
                back = rejoin(cluster, old, new)
                failovers.append(seconds)
                rejoins.append(back)
                print(f"round {i + 1}: kill -9 {old.ip} -> write on {new.ip} after {seconds:.2f} s; "
                      f"{old.ip} a replica again {back:.2f} s after its start", flush=True)
            print(summary("kill -9 of the primary -> first write through Sentinel", failovers))
            print(summary("old primary started -> linked replica", rejoins))
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
