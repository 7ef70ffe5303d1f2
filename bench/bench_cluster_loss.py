"""Benchmark: a three-node cluster behind its load balancer loses a node (figures, not pass/fail).

    python bench/bench_cluster_loss.py [--env benchcluster] [--nodes node-1,node-3] [--rolling N] [--reuse] [--keep]

The env is a local three-node cluster behind the emulated 1:1 NAT (as `e2ecluster`), brought up
and deployed first (`--reuse`: take a deployed env as it is) and removed afterwards unless
`--keep`. For each node named (default: every node; node-1 is the first Redis primary and the
certificate node):

  drain     the drain flag set -> the balancer reports the node DOWN; removed -> UP again
  power off the plug pulled -> the balancer reports it DOWN; new spoken calls one after another
            through the LiveKit name until one succeeds: seconds until the first success and how
            many failed before it
  power on  -> SSH -> the balancer reports it UP (no operator action); one more call

  rolling   (--rolling N, after the nodes' runs; --nodes '' for only this) N rolling deploys, each
            after a change that restarts LiveKit on every node, while two clients open new calls
            through the balancer: the deploy's time, each node's out/drain/converge/back figures
            (the drain's two steps too), calls made and failed

Times are seconds from the action. tests/e2e/cluster/test_node_loss.py and test_rolling.py assert
the behaviour on the CI cluster (a drain of node-2, power cuts of node-3 and node-1, one rolling
deploy); this prints the numbers for every node. `make bench-cluster` runs every node and one
rolling deploy.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra import outputs  # noqa: E402
from infra import up as pipeline  # noqa: E402
from infra.local import balancer, down, power, up  # noqa: E402
from infra.local.names import EnvNames  # noqa: E402
from infra.probes.roundtrip import round_trips  # noqa: E402
from infra.spec import drain_flag_command  # noqa: E402
from infra.steps import Progress  # noqa: E402
from tests.e2e import callers, envs, network  # noqa: E402

#: A node must be out (or back) within this; calls must succeed again within RECOVER_S.
SETTLE_S = 60
RECOVER_S = 300
REJOIN_S = 300


def prepare(env: str, reuse: bool) -> None:
    if reuse and outputs.path_for(env).is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        config = envs.write_config(Path(tmp) / f"Pulumi.{env}.yaml", {"network": "nat"})
        t0 = time.monotonic()
        spec = pipeline.load(env, config, nodeCount=3)
        up.up(spec, Progress.quiet())
        result = envs.deploy(env, 2400)
        if result.returncode != 0:
            raise SystemExit(f"deploy of {env} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        print(f"{env}: three nodes up and deployed in {time.monotonic() - t0:.0f} s", flush=True)


def call(out: outputs.Outputs) -> tuple[bool, str]:
    (result,) = round_trips(out, 1, timeout=60)
    return bool(result["ok"]), str(result.get("error") or "")


def drain(env: str, out: outputs.Outputs, names: EnvNames, node: str) -> str:
    network.ssh(env, node, drain_flag_command(on=True))
    try:
        out_s = balancer.wait_for(names, node, up=False, deadline_s=SETTLE_S)
        ok, error = call(out)
    finally:
        network.ssh(env, node, drain_flag_command(on=False))
    back_s = balancer.wait_for(names, node, up=True, deadline_s=SETTLE_S)
    return (f"drain: out of the balancer {out_s:.1f} s after the flag, a new call {'ok' if ok else 'FAILED ' + error}, "
            f"back {back_s:.1f} s after the flag was removed")


def _when_out(names: EnvNames, node: str, t0: float, seen: dict[str, float]) -> None:
    """Record (in `seen`) the seconds from t0 until the balancer reports `node` DOWN."""
    try:
        balancer.wait_for(names, node, up=False, deadline_s=SETTLE_S)
        seen["out"] = time.monotonic() - t0
    except Exception as exc:  # noqa: BLE001 - a figure missing is reported, not raised from a thread
        seen["error"] = str(exc)  # type: ignore[assignment]


def power_cut(env: str, out: outputs.Outputs, names: EnvNames, node: str) -> str:
    t0 = time.monotonic()
    power.power(env, node, "off")
    seen: dict[str, float] = {}
    watcher = threading.Thread(target=_when_out, args=(names, node, t0, seen), daemon=True)
    watcher.start()
    failed, first_ok = 0, None
    try:
        while first_ok is None and time.monotonic() - t0 < RECOVER_S:
            ok, _error = call(out)
            if ok:
                first_ok = time.monotonic() - t0
            else:
                failed += 1
        watcher.join(SETTLE_S)
    finally:
        t1 = time.monotonic()
        power.power(env, node, "on")
    balancer.wait_for(names, node, up=True, deadline_s=REJOIN_S)
    back = time.monotonic() - t1
    ok_after, _ = call(out)
    recovered = f"{first_ok:.1f} s" if first_ok is not None else f"not within {RECOVER_S} s"
    taken_out = f"{seen['out']:.1f} s" if "out" in seen else f"not seen ({seen.get('error')})"
    return (f"power off: out of the balancer after {taken_out}; first new call to succeed ended {recovered} "
            f"after the cut ({failed} failed before it); power on: back in the balancer {back:.1f} s after the "
            f"power button, the next call {'ok' if ok_after else 'FAILED'}")


def rolling(env: str, out: outputs.Outputs) -> str:
    nodes = list(out.spec.balancer.targets)
    callers.drift_livekit_config(env, nodes)
    stop = threading.Event()
    t0 = time.monotonic()
    running = callers.start_callers(out, stop, epoch=t0)
    try:
        result = envs.deploy(env, 2400, "--rolling")
    finally:
        calls = callers.stop_callers(running, stop)
    seconds = time.monotonic() - t0
    if result.returncode != 0:
        raise SystemExit(f"rolling deploy failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    lines = result.stdout.splitlines()
    summary = next((line for line in lines if " rolled in " in line), "(no summary line)")
    drains = [line for line in lines if " drained in " in line]
    failed = [f"failed: +{c.at_s:.1f} s from the start, {callers.placement(env, nodes, c.room)}: {c.error}"
              for c in calls if not c.ok]
    return (f"rolling deploy {seconds:.1f} s, {len(calls)} new calls meanwhile, {len(failed)} failed"
            + "".join(f"\n  {line}" for line in [summary, *drains, *failed]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="benchcluster")
    ap.add_argument("--nodes", default="node-1,node-2,node-3")
    ap.add_argument("--rolling", type=int, default=0, metavar="N", help="rolling deploys to measure")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    prepare(args.env, args.reuse)
    out, names = outputs.read(args.env), EnvNames(args.env)
    try:
        for node in filter(None, args.nodes.split(",")):
            balancer.wait_for(names, node, up=True, deadline_s=REJOIN_S)
            print(f"{node}: {drain(args.env, out, names, node)}", flush=True)
            print(f"{node}: {power_cut(args.env, out, names, node)}", flush=True)
        for i in range(args.rolling):
            for node in out.spec.balancer.targets:
                balancer.wait_for(names, node, up=True, deadline_s=REJOIN_S)
            print(f"rolling {i + 1}: {rolling(args.env, out)}", flush=True)
    finally:
        if not args.keep:
            down.down(args.env, Progress.quiet())
    return 0


if __name__ == "__main__":
    sys.exit(main())
