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

from infra.outputs import Outputs, OutputsError, read

ROOT = Path(__file__).resolve().parents[1]
#: Four at once: the three round trips and the admin CLI's call (the long checks) each get one.
WORKERS = 4
#: Calls the suite places at once: each holds one of the node's agent jobs (AGENT_MAX_JOBS, 4 by
#: default) while it lasts, so two leave room for real callers while a verify runs.
CALLS_AT_ONCE = 2


def calls_at_once(out: Outputs) -> int:
    """CALLS_AT_ONCE, or fewer for a local environment: its machines and the calls' clients share
    this host's cores, and a call is real-time audio through a node's agent. One call per two
    host cores per machine: with two calls at once on two cores a greeting stalled for > 2.5 s
    (the client heard "Hello? Hello?"), on one machine as on three."""
    if out.local is None:
        return CALLS_AT_ONCE
    return max(1, min(CALLS_AT_ONCE, (os.cpu_count() or 1) // (2 * max(1, len(out.nodes)))))


def call_slot_args(out: Outputs, worker: str | None = None) -> dict[str, object]:
    """The `slot` argument of agent/roundtrip_cli.py: the client takes one of the suite's call
    slots (agent.locks.slot on files next to the outputs) only for the part of its call the agent
    is in (connect to hang-up), not while it loads its speech models or transcribes what it heard."""
    return {"dir": str(out.paths.dir), "slots": calls_at_once(out),
            "worker": worker or os.environ.get("PYTEST_XDIST_WORKER", "")}


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
