"""`python -m deploy.full --env <env>`: the full converge with pyinfra (`python -m deploy` runs
it when its one-SSH check finds something to do, or with --full).

Prints one line per operation that changed (which hosts), then a summary; writes the same
summary to `.stack/<env>/deploy-last.json`. Exit codes are listed in deploy/runner.py.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # as pyinfra's own CLI does: SSH to several hosts concurrently

import argparse  # noqa: E402
import sys  # noqa: E402

from deploy.runner import Options, deploy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.full", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="environment name (reads .stack/<env>/outputs.json)")
    parser.add_argument("--limit", action="append", default=[], help="only these node names (repeatable)")
    parser.add_argument("--plan", action="store_true", help="show what would change, change nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list unchanged operations")
    args = parser.parse_args(argv)
    return deploy(Options(env=args.env, limit=tuple(args.limit), plan=args.plan, verbose=args.verbose))


if __name__ == "__main__":
    sys.exit(main())
