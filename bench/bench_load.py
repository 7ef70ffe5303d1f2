"""Benchmark: how many calls one server carries, through the real network path (figures, not pass/fail).

    make bench-load ENV=<env> [DURATION=<seconds per step>]
    python bench/bench_load.py --env cap1 --duration 30 [--shapes agent,meeting,broadcast] [--no-agent]

For each room shape (1:1 voice-agent rooms: a user and an agent-like publisher; meetings of
--meeting-size speakers; one speaker to many listeners) the load generator (bench/loadgen,
Go + LiveKit's server SDK) joins real rooms from the client side and the load doubles step by
step until loss passes 1 %, LiveKit's CPU reaches 90 % of what it may use, the joins fail, or
the generator's own core is the limit; one more step between the last good and the first bad
refines the knee. Then the deployed agent is called by 1, 2, … concurrent spoken conversations
(up to its AGENT_MAX_JOBS) and voice-to-voice latency, CPU and memory are read per level.

Local environments: the generator runs in the client namespace pinned to the last CPU
(taskset), LiveKit is pinned to the others for the SFU steps (restored afterwards), so "the
node's CPU is saturated" means the cores LiveKit was given. The machine's load (uptime) is
printed before and after: on a shared machine read the figures with it.

Prints a table per shape and the sizing section; the last line is one JSON object with
forwarded_streams, loss_pct, livekit_cpu_cores, streams_per_core (at the reported capacity:
the largest good step of any shape) and agent_conversations (before p95 > --v2v-limit).
Full results go to .stack/<env>/bench-load.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.capacity import agent_load, build, report  # noqa: E402
from bench.capacity.node import Node, NodeError  # noqa: E402
from bench.capacity.sfu import Context, Step, StepError, check_target, run_step  # noqa: E402
from infra import outputs as outputs_mod  # noqa: E402


def ramp_steps(shape: str, meeting_size: int, broadcast_rooms: int) -> list[Step]:
    if shape == "agent":
        return [Step("agent", n) for n in (5, 10, 20, 40, 80, 160, 320, 640)]
    if shape == "meeting":
        return [Step("meeting", n, meeting_size) for n in (1, 2, 4, 8, 16, 32, 64)]
    if shape == "broadcast":
        return [Step("broadcast", broadcast_rooms, n) for n in (25, 50, 100, 200, 400, 800, 1600, 3200)]
    raise SystemExit(f"--shapes has {shape!r}; use agent, meeting, broadcast")


def midpoint(good: Step, bad: Step) -> Step | None:
    if good.shape == "broadcast":
        size = (good.size + bad.size) // 2
        return Step(good.shape, good.rooms, size) if good.size < size < bad.size else None
    rooms = (good.rooms + bad.rooms) // 2
    return Step(good.shape, rooms, good.size) if good.rooms < rooms < bad.rooms else None


def ramp(ctx: Context, shape: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    good: Step | None = None
    for step in ramp_steps(shape, args.meeting_size, args.broadcast_rooms):
        if step.streams > args.max_streams or step.participants > 5000:
            ctx.progress(f"  {step.label()}: {step.streams} streams is past --max-streams {args.max_streams}; stop")
            break
        result = _step(ctx, step, args)
        rows.append(result)
        if not result["ok"]:
            mid = midpoint(good, step) if good else None
            if mid is not None:
                rows.append(_step(ctx, mid, args))
            break
        good = step
    return rows


def _step(ctx: Context, step: Step, args: argparse.Namespace) -> dict[str, Any]:
    ctx.progress(f"  {step.label()}: {step.participants} participants, {step.streams} forwarded streams")
    try:
        r = run_step(ctx, step, args.duration).row()
    except (StepError, NodeError) as exc:
        ctx.progress(f"  {step.label()}: FAILED: {exc}")
        return {"step": {"shape": step.shape, "rooms": step.rooms, "size": step.size, "label": step.label(),
                         "participants": step.participants}, "ok": False, "reason": str(exc)[:500],
                "streams": step.streams, "loss_pct": None, "livekit_cores": 0.0, "mcores_per_stream": 0.0,
                "livekit_heap_mib": 0.0, "livekit_heap_idle_mib": 0.0}
    ctx.progress(f"  -> LiveKit {r['livekit_cores']:.2f} cores ({r['mcores_per_stream']:.2f} mcores/stream), "
                 f"loss {r['loss_pct']:.2f}%, jitter p95 {r['jitter_ms_p95']:.1f} ms, "
                 f"{r['node_kbps_per_stream']:.0f} kbit/s per stream at the node, Go heap "
                 f"{r['livekit_heap_mib']:.0f} MiB, generator {r['loadgen_cores']:.2f} cores"
                 + ("" if r["ok"] else f"  [knee: {r['reason']}]"))
    return r


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def print_table(shape: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{shape}: step | streams | LiveKit cores | mcores/stream | loss % | jitter p95 ms | "
          "kbit/s/stream (node) | Go heap MiB | LiveKit PSS MiB | generator cores | UDP rcvbuf errors | ok")
    for r in rows:
        if r.get("loss_pct") is None:
            print(f"  {r['step']['label']} | {r['streams']} | — | — | — | — | — | — | — | — | — | no: {r['reason'][:120]}")
            continue
        print(f"  {r['step']['label']} | {r['streams']} | {r['livekit_cores']:.2f} | {r['mcores_per_stream']:.2f} | "
              f"{r['loss_pct']:.2f} | {r['jitter_ms_p95']:.1f} | {r['node_kbps_per_stream']:.0f} | "
              f"{r['livekit_heap_mib']:.0f} | {r['livekit_mem_mib']:.0f} | "
              f"{r['loadgen_cores']:.2f} | {r['udp_rcvbuf_errors']:.0f} | {'yes' if r['ok'] else 'no: ' + r['reason']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=os.environ.get("ENV", "local"))
    ap.add_argument("--duration", type=float, default=30, help="measurement seconds per step")
    ap.add_argument("--shapes", default="agent,meeting,broadcast")
    ap.add_argument("--meeting-size", type=int, default=6)
    ap.add_argument("--broadcast-rooms", type=int, default=1)
    ap.add_argument("--max-streams", type=int, default=3000)
    ap.add_argument("--ice", choices=("all", "relay"), default="all", help="relay: media through TURN only")
    ap.add_argument("--no-agent", action="store_true", help="skip the agent conversations")
    ap.add_argument("--agent-levels", default="", help="concurrent conversations to try (default 1..AGENT_MAX_JOBS)")
    ap.add_argument("--v2v-limit", type=float, default=1.5, help="voice-to-voice p95 limit, seconds")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the generator and LiveKit to CPUs")
    ap.add_argument("--from-json", type=Path, help="report again from a saved bench-load.json; measure nothing")
    args = ap.parse_args()
    if args.from_json:
        print(json.dumps(summarize(json.loads(args.from_json.read_text()), args.v2v_limit, args.from_json)))
        return 0
    if args.duration < 5:
        raise SystemExit(f"--duration is {args.duration}; give at least 5 seconds per step")

    def progress(msg: str) -> None:
        print(msg, flush=True)

    out = outputs_mod.read(args.env)
    node = Node.from_outputs(out)
    address = check_target(out)
    binary, loop = build.loadgen_binary(progress), build.speech_loop(progress)
    host_cpus = os.cpu_count() or 1
    snap = node.snapshot()
    node_cpus = int(snap["nproc"])
    pin = not args.no_pin and out.client_netns is not None and host_cpus >= 2
    loadgen_cpus = str(host_cpus - 1) if pin else None
    livekit_cpus = f"0-{host_cpus - 2}" if pin else None
    progress(f"==> bench-load on {args.env}: LiveKit {out.livekit_url} ({address or 'cloud'}), node {node.name} "
             f"with {node_cpus} CPUs; generator {binary} on CPU {loadgen_cpus or 'any'}, LiveKit on CPU "
             f"{livekit_cpus or 'any'}; {args.duration:.0f} s per step; load average {load_average()}")
    started = time.time()
    results: dict[str, Any] = {"env": args.env, "duration_s": args.duration, "load_before": load_average(),
                               "pinned": pin, "node_cpus": node_cpus, "shapes": {}}
    ctx = Context(out, node, binary, loop, loadgen_cpus, livekit_cpus=(host_cpus - 1) if pin else node_cpus,
                  interval=max(5.0, args.duration / 3), ice=args.ice, progress=progress)
    idle = snap
    try:
        if livekit_cpus:
            progress(f"pinning LiveKit to CPU {node.pin('livekit', livekit_cpus)}")
        for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
            progress(f"==> {shape}")
            results["shapes"][shape] = ramp(ctx, shape, args)
    finally:
        if livekit_cpus:
            progress(f"LiveKit back on CPU {node.pin('livekit', None)}")

    levels: list[dict[str, Any]] = []
    if not args.no_agent:
        max_jobs = int(node.env_value("AGENT_MAX_JOBS") or 4)
        wanted = [int(x) for x in args.agent_levels.split(",") if x.strip()] or list(range(1, max_jobs + 1))
        progress(f"==> agent conversations: levels {wanted} (AGENT_MAX_JOBS={max_jobs}), "
                 f"{max(args.duration, 30):.0f} s each")
        for c in wanted:
            lv = agent_load.run_level(out, node, c, max(args.duration, 30), loadgen_cpus).row()
            levels.append(lv)
            progress(f"  {c} concurrent: {lv['ok']}/{lv['trips']} ok ({lv['understood']} understood), "
                     f"voice-to-voice p50 {lv['p50_s']:.2f} s p95 {lv['p95_s']:.2f} s, agent {lv['agent_cores']:.2f} + "
                     f"speech {lv['speech_cores']:.2f} cores, agent memory {lv['agent_mem_peak_mib']:.0f} MiB "
                     f"(idle {lv['agent_mem_idle_mib']:.0f})" + (f", errors: {lv['errors']}" if lv["errors"] else ""))
            # Go on while every call works and p95 stays within twice the single call's (a curve
            # is worth having even where one call already misses --v2v-limit).
            if lv["ok"] < lv["trips"] or not lv["ok"] or lv["p95_s"] > 2 * max(args.v2v_limit, levels[0]["p95_s"]):
                break
    results["agent_levels"] = levels
    results["load_after"] = load_average()
    results["wall_s"] = time.time() - started
    results["idle_mib"] = sum(u["mem_bytes"] for u in idle["units"].values()) / (1024 * 1024)
    path = outputs_mod.path_for(args.env).parent / "bench-load.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(summarize(results, args.v2v_limit, path)))
    return 0


def summarize(results: dict[str, Any], v2v_limit: float, path: Path) -> dict[str, Any]:
    """Tables, the sizing section (also written beside the results) and the summary object."""
    levels = results.get("agent_levels", [])
    all_rows = [r for rows in results["shapes"].values() for r in rows]
    for shape, rows in results["shapes"].items():
        print_table(shape, rows)
    knees = {shape: report.knee(rows) for shape, rows in results["shapes"].items()}
    best = max((k for k in knees.values() if k), key=lambda r: r["streams"], default=None)
    fit = report.memory_fit(all_rows) or (0.0, 0.0)
    per_stream = report.mcores_per_stream(all_rows)
    per_shape = {s: report.mcores_per_stream(rows) for s, rows in results["shapes"].items()}
    conv_ok = max((lv["concurrency"] for lv in levels
                   if lv["ok"] == lv["trips"] and lv["ok"] and lv["p95_s"] <= v2v_limit), default=0)
    single = levels[0]["p95_s"] if levels and levels[0]["ok"] else None
    conv_relative = max((lv["concurrency"] for lv in levels if single and lv["ok"] == lv["trips"] and lv["ok"]
                         and lv["p95_s"] <= 1.5 * single), default=0)
    offline, external, conv_mib = report.conversation_costs(levels)
    kbps = sorted(r["node_kbps_per_stream"] for r in all_rows if r["ok"] and r.get("node_kbps_per_stream"))
    if per_stream:
        costs = report.Costs(per_shape.get("agent") or per_stream, per_shape.get("meeting") or per_stream,
                             kbps[len(kbps) // 2] if kbps else 0.0, fit[0], fit[1], offline, external, conv_mib,
                             conv_ok, results.get("idle_mib", 0.0))
        sizing = report.sizing_markdown(costs, f"{results['env']}, {results['node_cpus']}-CPU node, load average "
                                               f"{results['load_before']}")
        print("\n" + sizing)
        path.with_name("sizing.md").write_text(sizing + "\n")
    if levels:
        print("\nagent: concurrent | trips ok | understood | p50 s | p95 s | agent cores | speech cores | "
              "agent memory peak MiB")
        for lv in levels:
            print(f"  {lv['concurrency']} | {lv['ok']}/{lv['trips']} | {lv['understood']} | {lv['p50_s']:.2f} | "
                  f"{lv['p95_s']:.2f} | {lv['agent_cores']:.2f} | {lv['speech_cores']:.2f} | {lv['agent_mem_peak_mib']:.0f}")
    return {
        "env": results["env"],
        "shape": best["step"]["label"] if best else None,
        "forwarded_streams": best["streams"] if best else 0,
        "loss_pct": best["loss_pct"] if best else None,
        "livekit_cpu_cores": best["livekit_cores"] if best else None,
        "streams_per_core": round(best["streams"] / best["livekit_cores"], 1) if best and best["livekit_cores"] else None,
        "mcores_per_stream": {s: (round(v, 3) if v else None) for s, v in per_shape.items()},
        "knees": {s: (k["streams"] if k else 0) for s, k in knees.items()},
        "limits": {s: next((r["reason"] for r in rows if not r["ok"]), "not reached") for s, rows in
                   results["shapes"].items()},
        "generator_bound": any("generator-bound" in (r.get("reason") or "") for r in all_rows),
        "mib_per_room": round(fit[0], 3), "mib_per_participant": round(fit[1], 3),
        "kbps_per_stream": round(kbps[len(kbps) // 2], 1) if kbps else None,
        "agent_conversations": conv_ok,
        "agent_conversations_within_1_5x_single_p95": conv_relative,
        "agent_p95_s": {lv["concurrency"]: lv["p95_s"] for lv in levels},
        "agent_cores_per_conversation": report.finite(offline),
        "agent_mib_per_conversation": report.finite(conv_mib),
        "load_before": results["load_before"], "load_after": results.get("load_after"),
        "results": str(path),
    }


if __name__ == "__main__":
    sys.exit(main())
