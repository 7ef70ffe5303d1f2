"""`make verify`: the verification suite (tests/verify) against one environment's outputs.

    python -m infra.verify --env <env> [-k <expr>] [pytest options...]

Its checks are independent of each other (each reads the outputs and looks from the outside or
over SSH; the round trips under the three network conditions stand in client namespaces of
their own), so they run at once in worker processes (pytest-xdist). Most of the suite's time is
waiting: a spoken round trip is ~16 s of real-time audio and connection set-up, not CPU. Work
stealing keeps the long checks on different workers. Every check keeps its ID and its own
failure message; workers share nothing but the outputs file they read and the verify results
file, whose writers take a lock (tests/verify/test_roundtrip.py).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from infra.outputs import OutputsError, read

ROOT = Path(__file__).resolve().parents[1]
#: Four at once: the three round trips and the admin CLI's call (the long checks) each get one.
WORKERS = 4


def argv(env: str, *select: str, tb: str = "short", workers: int = WORKERS, quiet: bool = True) -> list[str]:
    """The pytest command line of the suite, run from a checkout's root (the suite of that checkout);
    `select`: only the checks whose names match one of them."""
    cmd = [sys.executable, "-m", "pytest", "tests/verify", f"--env={env}", "-p", "no:cacheprovider",
           "-o", "addopts=", "-ra", f"--tb={tb}"]
    if quiet:
        cmd.append("-q")
    if workers > 1:
        cmd += ["-n", str(workers), "--dist", "worksteal"]
    if select:
        cmd += ["-k", " or ".join(select)]
    return cmd


def run(env: str, *select: str, timeout: float = 900, tb: str = "short", cwd: Path = ROOT,
        workers: int = WORKERS) -> subprocess.CompletedProcess[str]:
    """The suite with its output captured (for tests and benchmarks); `cwd`: the checkout whose suite runs."""
    return subprocess.run(argv(env, *select, tb=tb, workers=workers), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=os.environ.get("ENV", "local"))
    parser.add_argument("-k", action="append", default=[], help="only the checks matching (repeatable)")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"checks at once (default {WORKERS}; 1: in turn)")
    known, rest = parser.parse_known_args(args)
    try:
        read(known.env)  # a clear error here rather than one per worker
    except OutputsError as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return 2
    cmd = argv(known.env, *known.k, workers=known.workers, quiet=False) + rest
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
