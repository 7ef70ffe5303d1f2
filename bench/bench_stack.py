"""Benchmark: deploy, verify and voice-to-voice latency on a local environment (figures only).

    python bench/bench_stack.py [--env benchstack] [--round-trips 10] [--keep]

Reports: first converge and no-op re-converge of one node, idle memory of the whole node and
of the agent services, the wall time of a full `make verify`, and voice-to-voice latency
p50/p95 over N round trips in each client network condition (normal, UDP blocked, TCP 443 only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra import outputs as outputs_mod  # noqa: E402
from infra import up as pipeline  # noqa: E402
from infra import verify  # noqa: E402
from infra.local import down, machines, up  # noqa: E402
from infra.probes import netcond  # noqa: E402
from infra.probes.roundtrip import round_trips  # noqa: E402
from infra.steps import Progress  # noqa: E402


def timed(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    return proc, time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def node_memory(ctx) -> tuple[float, float]:
    """(MiB resident of every process on the node, MiB of the agent services)."""
    script = ("ps -eo rss=,args= | awk '{t+=$1} /agent[.](worker|speech_server|token_service|webhooks)/ "
              "{a+=$1} END {print t/1024, a/1024}'")
    out = machines.ssh(ctx.names, ctx.names.node_public_ip(0), script).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="benchstack")
    ap.add_argument("--round-trips", type=int, default=10)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    down.down(args.env, Progress.quiet())
    ctx = up.up(pipeline.load(args.env, None, nodeCount=1), Progress.quiet())
    try:
        proc, first = timed([sys.executable, "-m", "deploy", "--env", args.env])
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            return 1
        proc, noop = timed([sys.executable, "-m", "deploy", "--env", args.env])
        print(f"deploy: first converge {first:.1f}s, no-op re-converge {noop:.1f}s")
        total, agent = node_memory(ctx)
        print(f"idle memory: node {total:.0f} MiB resident (all processes), agent services {agent:.0f} MiB; "
              f"Hetzner CX22 has 4096 MiB -> {100 * (1 - total / 4096):.0f}% free")
        proc, wall = timed(verify.argv(args.env))
        print(f"make verify: {wall:.1f}s wall, {'passed' if proc.returncode == 0 else 'FAILED'}")
        out = outputs_mod.read(args.env)
        for condition in netcond.RULES:
            results = round_trips(out, args.round_trips, condition)  # in the condition's own namespace
            lat = [r["latency_s"] for r in results if r["ok"]]
            heard = sum(1 for r in results if r["ok"] and "turned on the lights" in r["answer"].lower())
            if lat:
                print(f"voice-to-voice [{condition}]: n={len(lat)}/{len(results)} ok, understood {heard}, "
                      f"p50 {statistics.median(lat):.2f}s, p95 {pct(lat, 0.95):.2f}s, min {min(lat):.2f}s")
            else:
                print(f"voice-to-voice [{condition}]: no successful round trip: {results[0].get('error')}")
    finally:
        if not args.keep:
            down.down(args.env, Progress.quiet())
    return 0


if __name__ == "__main__":
    sys.exit(main())
