"""Benchmark: the operator's feedback loop, in one run on the same environment (figures, not pass/fail).

    python bench/bench_feedback.py [--env benchfb] [--nodes 1] [--runs 5] [--cluster-nodes 3] [--cold] [--keep]

Prints:
  * the no-op deploy (`python -m deploy`, the one-SSH check) and the full no-op converge (`--full`);
  * the floor: one SSH session that reads the state a deploy checks (a digest of every managed
    file, unit states, package versions and the agent venv's `pip freeze`), and the ratio;
  * `make verify` wall time for the environment (and, with --cluster-nodes, for a cluster);
  * with --cold: a fresh `make up` from a clean clone with empty caches (a scratch VOICESTACK_CACHE,
    no venvs, no pip/npm cache), broken down by step from its own progress lines.
The environments are the benchmark's own (`--env`), brought up if missing and removed unless --keep.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy import fastpath  # noqa: E402
from infra import outputs, verify  # noqa: E402
from infra import up as pipeline  # noqa: E402
from infra.local import down as local_down  # noqa: E402
from infra.local import up as local_up  # noqa: E402
from infra.steps import Progress  # noqa: E402

PY = sys.executable
STEP_LINE = re.compile(r"^\[\s*([\d.]+)s\]\s+(\S.*?): (.*) \(([\d.]+)s\)$")


def timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    return time.monotonic() - t0, proc


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ensure_env(env: str, nodes: int) -> outputs.Outputs:
    if not outputs.path_for(env).is_file():
        local_up.up(pipeline.load(env, None, nodeCount=nodes), Progress())
        seconds, proc = timed([PY, "-m", "deploy", "--env", env])
        if proc.returncode != 0:
            raise SystemExit(f"deploy of {env} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        print(f"  first converge of {env}: {seconds:.1f}s")
    return outputs.read(env)


def floor_command(out: outputs.Outputs, node: str) -> str:
    """What the issue calls the physical floor: one SSH that reads everything a deploy checks."""
    return (f"( {fastpath.state_script(fastpath.units_for(out, node))}; "
            "/opt/voicestack/agent/venv/bin/pip freeze 2>/dev/null ) | sha256sum")


def measure_deploy(env: str, runs: int) -> None:
    out = outputs.read(env)
    proc = subprocess.run([PY, "-m", "deploy", "--env", env], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"deploy of {env} failed:\n{proc.stdout[-2000:]}")
    fast = [timed([PY, "-m", "deploy", "--env", env])[0] for _ in range(runs)]
    full = [timed([PY, "-m", "deploy", "--env", env, "--full"])[0] for _ in range(max(1, runs // 2))]
    floor = []
    for _ in range(runs):
        t0 = time.monotonic()
        for node in out.nodes:
            subprocess.run(fastpath.ssh_argv(out, node, floor_command(out, node.name)), capture_output=True,
                           check=True)
        floor.append(time.monotonic() - t0)
    print(f"  no-op deploy (one-SSH check):   median {median(fast):.2f}s  (min {min(fast):.2f}, max {max(fast):.2f})")
    print(f"  no-op full converge (--full):   median {median(full):.1f}s")
    print(f"  floor (one SSH reading state):  median {median(floor):.2f}s")
    print(f"  ratio no-op / floor:            {median(fast) / median(floor):.2f}x  "
          f"(full converge: {median(full) / median(floor):.0f}x)")


def measure_verify(env: str) -> None:
    seconds, proc = timed(verify.argv(env))
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
    print(f"  make verify ({env}): {seconds:.1f}s wall — {tail}")


def cold_up(env: str) -> None:
    """`make up` from a clean clone with every cache empty, broken down by its progress lines."""
    scratch = Path(tempfile.mkdtemp(prefix="vs-cold-"))
    clone = scratch / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    run_env = dict(os.environ, VOICESTACK_CACHE=str(scratch / "cache"), VOICESTACK_WEB_CACHE=str(scratch / "web"),
                   PIP_NO_CACHE_DIR="1", npm_config_cache=str(scratch / "npm"), GOFLAGS="-modcacherw")
    try:
        seconds, proc = timed(["make", "up", f"ENV={env}"], env=run_env, cwd=clone)
        print(f"  fresh make up: {seconds:.0f}s ({'ok' if proc.returncode == 0 else 'FAILED'})")
        for line in proc.stdout.splitlines():
            m = STEP_LINE.match(line.strip())
            if m:
                print(f"    {m.group(2):<28} {float(m.group(4)):7.1f}s")
            elif line.startswith("==> "):
                print(f"    {line}")
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
    finally:
        subprocess.run([PY, "-m", "infra.local", "down", "--env", env], cwd=ROOT, capture_output=True,
                       env=run_env)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="benchfb")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cluster-nodes", type=int, default=0, help="also measure verify on a cluster of N nodes")
    ap.add_argument("--cold", action="store_true", help="also time a fresh `make up` with empty caches")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    made = [] if outputs.path_for(args.env).is_file() else [args.env]
    ensure_env(args.env, args.nodes)
    try:
        print(f"deploy, {args.nodes} node(s):")
        measure_deploy(args.env, args.runs)
        print("verify:")
        measure_verify(args.env)
        if args.cluster_nodes:
            cluster = f"{args.env}c"
            made += [] if outputs.path_for(cluster).is_file() else [cluster]
            ensure_env(cluster, args.cluster_nodes)
            measure_deploy(cluster, max(2, args.runs // 2))
            measure_verify(cluster)
        if args.cold:
            print("fresh make up (empty caches, clean clone):")
            cold_up(f"{args.env}cold")
    finally:
        if not args.keep:
            for env in made:
                local_down.down(env, Progress.quiet())
    return 0


if __name__ == "__main__":
    sys.exit(main())
