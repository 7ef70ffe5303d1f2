"""Benchmark: how fast one node heals (figures, not pass/fail).

    python bench/bench_recovery.py [--env benchrecovery] [--reuse] [--keep] [--no-verify]

For each service of a one-node local environment: `kill -9` of its main process -> systemd has
the unit active again with a new main process -> the service answers its own check -> the first
successful spoken round trip from the client side (coturn's with only TCP 443 open, so media must
use TURN/TLS). Then `systemctl reboot` inside the node -> systemd started it again -> SSH ->
systemd "running" -> the verification suite passed. Times are seconds from the kill (or the
reboot command); the kill-to-active and kill-to-answering figures are timed on the node itself.

The env is brought up and deployed first (`--reuse`: take a deployed env as it is) and removed
afterwards unless `--keep`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra import outputs, verify  # noqa: E402
from infra import up as pipeline  # noqa: E402
from infra.local import chaos, down, up  # noqa: E402
from infra.local.names import EnvNames  # noqa: E402
from infra.probes.roundtrip import CallSession  # noqa: E402
from infra.steps import Progress  # noqa: E402

ROUND_TRIP_DEADLINE_S = 300


def prepare(env: str, reuse: bool) -> None:
    if reuse and outputs.path_for(env).is_file():
        return
    quiet = Progress.quiet()
    down.down(env, quiet)
    t0 = time.monotonic()
    up.up(pipeline.load(env, None, nodeCount=1), quiet)
    result = subprocess.run([sys.executable, "-m", "deploy", "--env", env], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"deploy of {env} failed:\n{result.stderr[-3000:]}")
    print(f"{env}: up + deploy in {time.monotonic() - t0:.0f}s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="benchrecovery")
    parser.add_argument("--reuse", action="store_true", help="use the env as it is when it has outputs")
    parser.add_argument("--keep", action="store_true", help="leave the env running afterwards")
    parser.add_argument("--no-verify", action="store_true", help="after the reboot, stop at systemd 'running'")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    prepare(args.env, args.reuse)
    out = outputs.read(args.env)
    names, node = EnvNames(args.env), out.spec.nodes[0]
    rows = []
    try:
        with CallSession(out) as session:
            for target in chaos.targets(out.spec, node):
                r = chaos.kill_and_wait(names, node, target)
                condition = "tcp443-only" if target.unit == "coturn.service" else "normal"
                trip = chaos.round_trip_until(out, ROUND_TRIP_DEADLINE_S, condition, since=r["killed_at"],
                                              session=session)
                rows.append((target.unit, f"{r['active_s']:.1f}", f"{r['answers_s']:.1f}",
                             f"{trip['after_s']:.1f}" if trip["ok"] else f"failed ({trip.get('error')})",
                             f"{trip.get('latency_s', 0):.1f}", condition))
                print(f"  {target.unit}: {rows[-1][1:]}", flush=True)
        t0 = time.monotonic()
        got = chaos.reboot(names, out.spec, node)
        verified = "skipped"
        if not args.no_verify:
            proc = verify.run(args.env, timeout=1800)
            verified = f"{time.monotonic() - t0:.1f}" if proc.returncode == 0 else "verify FAILED"
    finally:
        if not args.keep:
            down.down(args.env, Progress.quiet())

    head = ("unit", "kill->active s", "kill->answers s", "kill->round trip s", "latency s", "client network")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"\nreboot (systemctl reboot inside): nspawn started again after {got['restarted_s']:.1f}s, "
          f"SSH after {got['ssh_s']:.1f}s, systemd {got['state']} after {got['running_s']:.1f}s, "
          f"every service answering after {got['ready_s']:.1f}s, verify suite passed after {verified}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
