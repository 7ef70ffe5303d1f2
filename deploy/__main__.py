"""`python -m deploy --env <env>`: converge every node of an environment over SSH.

First one SSH command per node compares the node with what the last converge recorded
(deploy/fastpath.py); when nothing changed, that is the whole deploy. Otherwise (or with
--full, --plan) the full pyinfra converge runs (deploy/full.py) and restarts exactly what it
touches. With --rolling a cluster converges one node at a time, each drained out of its load
balancer meanwhile (deploy/rolling.py). Exit codes are listed in deploy/runner.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from deploy import fastpath
from infra import outputs


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="environment name (reads .stack/<env>/outputs.json)")
    parser.add_argument("--limit", action="append", default=[], help="only these node names (repeatable)")
    parser.add_argument("--plan", action="store_true", help="show what would change, change nothing")
    parser.add_argument("--full", action="store_true", help="skip the one-SSH check: always run every operation")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list unchanged operations")
    parser.add_argument("--rolling", action="store_true",
                        help="a cluster one node at a time, each out of the load balancer meanwhile (deploy/rolling.py)")
    return parser.parse_known_args(argv)[0]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _arguments(argv)
    if args.rolling:
        if args.plan:
            print("deploy: --plan changes nothing, so it needs no --rolling; run it without", file=sys.stderr)
            return 2
        from deploy import rolling
        return rolling.main(args.env, tuple(args.limit), args.verbose, full=args.full)
    if not (args.full or args.plan):
        started = time.monotonic()
        try:
            out = outputs.read(args.env)
        except outputs.OutputsError:
            out = None  # the full deploy reports it properly
        if out is not None:
            checks = fastpath.check(out, tuple(args.limit))
            seconds = time.monotonic() - started
            if checks and all(c.clean for c in checks):
                print(f"deploy {args.env}: {len(checks)} node(s) unchanged since the last converge "
                      f"(one SSH each, {seconds:.1f}s): nothing to do")
                out.paths.deploy_last.write_text(json.dumps(
                    {"env": args.env, "seconds": round(seconds, 2), "operations": 0, "fast": True,
                     "changed": {}, "failed": {}}, indent=2) + "\n")
                return 0
            for c in checks:
                print(f"deploy {args.env}: {c.node}: {c.why}", flush=True)
    # A fresh process: pyinfra needs gevent's monkey patching before anything else is imported.
    argv = [a for a in argv if a != "--full"]
    os.execv(sys.executable, [sys.executable, "-m", "deploy.full", *argv])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
