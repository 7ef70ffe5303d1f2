"""Soak: a long run at 70 % of the measured knee — no crash, flat memory, nothing left behind.

    make bench-soak ENV=<env> [MINUTES=30]
    python bench/bench_soak.py --env cap1 --minutes 30 [--fraction 0.7] [--rooms N] [--wave 120]

The load is 1:1 voice-agent rooms (a user and an agent-like publisher) at `fraction` of the
1:1 knee in .stack/<env>/bench-load.json (or --rooms), in waves of --wave seconds: each wave
joins fresh rooms and leaves them, so rooms are created and closed all through the soak, as
they are in production. Alongside, real spoken conversations with the deployed agent run back
to back (--conversations, default 70 % of the agent's measured capacity, at least 1).

Reports, as figures (a benchmark, not a test):
- crashes: MainPID and NRestarts of livekit, voicestack-agent, voicestack-speech before/after;
- memory slope (MiB per hour, least squares over samples every --sample seconds) of LiveKit
  (PSS and Go heap in use) and of the agent worker;
- leftovers: the rooms LiveKit's RoomService lists after the last departure timeout (the admin
  API, as an operator would ask), and participants in them;
- webhooks: for the generator's rooms, the events the node's receiver logged
  (`journalctl -u voicestack-webhooks`, one line per event) against the events LiveKit had to
  send (room started/finished, participant joined/left, track published/unpublished).
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.capacity import agent_load, build  # noqa: E402
from bench.capacity.node import Node  # noqa: E402
from bench.capacity.sfu import Context, Step, check_target, list_rooms, run_step, wait_idle  # noqa: E402
from infra import outputs as outputs_mod  # noqa: E402

WATCHED = ("livekit", "voicestack-agent", "voicestack-speech")
MIB = 1024 * 1024
# agent/webhooks.py logs "... webhook <event> room=<name> ..." once per verified event.
WEBHOOK_LINE = re.compile(r"\bwebhook (\w+) room=(soak\S*)")


def slope_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) in MiB per hour."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    return 3600 * sum((t - mt) * (v - mv) for t, v in samples) / den if den else None


def services(node: Node) -> dict[str, dict[str, str]]:
    out = node.run("for u in " + " ".join(WATCHED) + "; do echo \"$u $(systemctl show -p MainPID --value $u) "
                   "$(systemctl show -p NRestarts --value $u) $(systemctl is-active $u)\"; done")
    return {u: {"pid": pid, "restarts": r, "state": s} for u, pid, r, s in (line.split() for line in out.splitlines())}


class Sampler(threading.Thread):
    def __init__(self, node: Node, every: float) -> None:
        super().__init__(daemon=True)
        self.node, self.every, self.t0 = node, every, time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                s = self.node.snapshot()
                self.samples.append({"t": time.monotonic() - self.t0,
                                     "livekit": s["units"]["livekit"]["mem_bytes"] / MIB,
                                     "heap": s["prom"].get("go_memstats_heap_inuse_bytes", 0) / MIB,
                                     "agent": s["units"]["voicestack-agent"]["mem_bytes"] / MIB,
                                     "rooms": s["prom"].get("livekit_room_total", 0),
                                     "participants": s["prom"].get("livekit_participant_total", 0)})
            except Exception as exc:  # noqa: BLE001 - a missed sample is reported, not fatal
                self.samples.append({"t": time.monotonic() - self.t0, "error": str(exc)[:200]})
            self.stopped.wait(self.every)


def knee_rooms(env: str) -> tuple[int, int]:
    """(1:1 rooms at the knee, agent conversations) from the last bench-load run."""
    path = outputs_mod.path_for(env).parent / "bench-load.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run 'make bench-load ENV={env}' first, or give --rooms")
    data = json.loads(path.read_text())
    ok = [r for r in data["shapes"].get("agent", []) if r.get("ok")]
    if not ok:
        raise SystemExit(f"{path} has no good 1:1 step; give --rooms")
    levels = data.get("agent_levels", [])
    conv = max((lv["concurrency"] for lv in levels if lv["ok"] and lv["ok"] == lv["trips"]), default=1)
    return max(r["step"]["rooms"] for r in ok), conv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=os.environ.get("ENV", "local"))
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--fraction", type=float, default=0.7)
    ap.add_argument("--rooms", type=int, default=0, help="1:1 rooms per wave (default: fraction x the knee)")
    ap.add_argument("--conversations", type=int, default=-1, help="concurrent agent conversations (-1: 70%% of measured)")
    ap.add_argument("--wave", type=float, default=120, help="seconds per wave of rooms")
    ap.add_argument("--sample", type=float, default=20, help="seconds between memory samples")
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    if not (0 < args.minutes <= 24 * 60) or args.wave < 20:
        raise SystemExit("--minutes must be in (0, 1440] and --wave at least 20 seconds")

    def progress(msg: str) -> None:
        print(msg, flush=True)

    out = outputs_mod.read(args.env)
    node = Node.from_outputs(out)
    check_target(out)
    rooms, conv = (args.rooms, 1) if args.rooms else knee_rooms(args.env)
    if not args.rooms:
        rooms = max(1, int(rooms * args.fraction))
    conversations = args.conversations if args.conversations >= 0 else max(1, int(conv * args.fraction))
    host_cpus = os.cpu_count() or 1
    pin = not args.no_pin and out.client_netns is not None and host_cpus >= 2
    client_cpus = str(host_cpus - 1) if pin else None
    ctx = Context(out, node, build.loadgen_binary(progress), build.speech_loop(progress), client_cpus,
                  livekit_cpus=int(node.snapshot()["nproc"]), interval=30, progress=lambda m: None)
    wait_idle(ctx)
    before = services(node)
    since = node.clock()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    progress(f"==> soak on {args.env}: {args.minutes:.0f} min, {rooms} x 1:1 rooms per {args.wave:.0f} s wave "
             f"({2 * rooms} streams), {conversations} concurrent agent conversation(s); load average {load_before}")
    sampler = Sampler(node, args.sample)
    sampler.start()
    end = time.monotonic() + args.minutes * 60
    convo_results: list[dict[str, Any]] = []

    def converse() -> None:
        while time.monotonic() < end - 30:
            try:
                lv = agent_load.run_level(out, node, conversations, min(300, max(30, end - time.monotonic() - 30)),
                                          client_cpus)
                convo_results.append(lv.row())
            except Exception as exc:  # noqa: BLE001 - reported in the summary
                convo_results.append({"error": str(exc)[:300]})
                time.sleep(5)

    talker = threading.Thread(target=converse, daemon=True)
    if conversations:
        talker.start()
    waves: list[dict[str, Any]] = []
    prefixes: list[str] = []
    n = 0
    while time.monotonic() < end - 20:
        prefix = f"soak{int(time.time()) % 100000:05d}w{n:03d}"
        wave_s = min(args.wave, max(10, end - time.monotonic() - 15))
        try:
            # Conversations keep the server busy on purpose: wait only for the last wave's rooms.
            r = run_step(ctx, Step("agent", rooms), wave_s, warmup=2, prefix=prefix,
                         after_prefix=prefixes[-1] if prefixes else "soak").row()
        except Exception as exc:  # noqa: BLE001 - one failed wave is a finding, not the end of the soak
            r = {"ok": False, "reason": str(exc)[:300], "step": {"rooms": rooms}}
        waves.append(r)
        prefixes.append(prefix)
        progress(f"  wave {n}: {'ok' if r['ok'] else 'NOT ok: ' + r['reason']}; loss {r.get('loss_pct', 0) or 0:.2f}%, "
                 f"LiveKit {r.get('livekit_cores', 0):.2f} cores, {r.get('livekit_mem_mib', 0):.0f} MiB")
        n += 1
    if conversations:
        talker.join(timeout=420)
    sampler.stopped.set()
    sampler.join(timeout=60)

    # Leftovers: after the departure timeout every room must be gone (the admin API's view).
    deadline, left = time.monotonic() + 90, list_rooms(out)
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = list_rooms(out)
    after = services(node)
    crashed = {u: {"before": before[u], "after": after.get(u)} for u in WATCHED
               if after.get(u, {}).get("pid") != before[u]["pid"] or after.get(u, {}).get("restarts") != before[u]["restarts"]
               or after.get(u, {}).get("state") != "active"}

    # Webhooks: what LiveKit had to send for the generator's rooms against what the receiver logged.
    # Only waves where every join succeeded have a known event count.
    complete_waves = [w for w, _ in zip(waves, prefixes) if w.get("received_streams") == w.get("streams")]
    complete_prefixes = tuple(p for w, p in zip(waves, prefixes) if w.get("received_streams") == w.get("streams"))
    lines = node.journal_lines("voicestack-webhooks", since, "room=soak")
    received = collections.Counter(m.group(1) for m in map(WEBHOOK_LINE.search, lines)
                                   if m and m.group(2).startswith(complete_prefixes or ("\0",)))
    expected = collections.Counter()
    for w in complete_waves:
        p = w["step"].get("participants", 2 * rooms)
        expected.update({"room_started": w["step"]["rooms"], "room_finished": w["step"]["rooms"],
                         "participant_joined": p, "participant_left": p, "track_published": p,
                         "track_unpublished": p})
    samples = [s for s in sampler.samples if "error" not in s]
    slopes = {k: slope_per_hour([(s["t"], s[k]) for s in samples]) for k in ("livekit", "heap", "agent")}
    # The first wave grows Go's heap and the agent's process pool to their working size once;
    # a leak is a slope that goes on after it.
    settled = [s for s in samples if s["t"] > args.wave + 60]
    settled_slopes = {k: slope_per_hour([(s["t"], s[k]) for s in settled]) for k in ("livekit", "heap", "agent")}
    trips = [c for c in convo_results if "trips" in c]
    summary = {
        "env": args.env, "minutes": args.minutes, "rooms_per_wave": rooms, "streams": 2 * rooms,
        "waves": len(waves), "waves_ok": sum(1 for w in waves if w.get("ok")),
        "max_loss_pct": max((w.get("loss_pct") or 0 for w in waves), default=None),
        "crashed": crashed or None,
        "livekit_mem_mib_per_hour": slopes["livekit"], "livekit_heap_mib_per_hour": slopes["heap"],
        "agent_mem_mib_per_hour": slopes["agent"],
        "after_first_wave_mib_per_hour": settled_slopes,
        "livekit_mem_mib": [round(samples[0]["livekit"], 1), round(samples[-1]["livekit"], 1)] if samples else None,
        "agent_mem_mib": [round(samples[0]["agent"], 1), round(samples[-1]["agent"], 1)] if samples else None,
        "rooms_left": [r.get("name") for r in left], "webhook_waves_counted": len(complete_waves),
        "webhooks_expected": sum(expected.values()),
        "webhooks_received": sum(received.values()), "webhooks_by_event": dict(received),
        "webhooks_missing": dict(expected - received), "webhooks_extra": dict(received - expected),
        "conversations": conversations, "conversation_trips": sum(c["trips"] for c in trips),
        "conversation_ok": sum(c["ok"] for c in trips),
        "conversation_p95_s": max((c["p95_s"] for c in trips), default=None),
        "load_before": load_before, "load_after": Path("/proc/loadavg").read_text().split()[:3],
    }
    path = outputs_mod.path_for(args.env).parent / "bench-soak.json"
    path.write_text(json.dumps({"summary": summary, "waves": waves, "samples": sampler.samples,
                                "conversations": convo_results}, indent=2, default=str))
    print(f"memory slope: LiveKit {summary['livekit_mem_mib_per_hour']} MiB/h (heap {summary['livekit_heap_mib_per_hour']}), "
          f"agent {summary['agent_mem_mib_per_hour']} MiB/h; after the first wave {settled_slopes}; crashes: {crashed or 'none'}; rooms left: {summary['rooms_left']}; "
          f"webhooks {summary['webhooks_received']}/{summary['webhooks_expected']}")
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
