"""From measured steps to figures: knees, per-stream and per-conversation costs, the sizing table.

Everything here is arithmetic on what the ramp measured (sfu.StepResult rows and
agent_load.Level rows as dicts); nothing is copied from elsewhere except the seed's and
LiveKit's published figures, which the table shows side by side for comparison.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

# Server types the project's providers accept (infra/providers.py): vCPUs, GiB, dedicated?
SERVERS: list[tuple[str, str, int, int, bool]] = [
    ("Hetzner", "cx22", 2, 4, False), ("Hetzner", "cx32", 4, 8, False), ("Hetzner", "cx42", 8, 16, False),
    ("Hetzner", "cx52", 16, 32, False), ("Hetzner", "ccx13", 2, 8, True), ("Hetzner", "ccx23", 4, 16, True),
    ("Hetzner", "ccx33", 8, 32, True), ("DigitalOcean", "s-2vcpu-4gb", 2, 4, False),
    ("DigitalOcean", "s-4vcpu-8gb", 4, 8, False), ("DigitalOcean", "s-8vcpu-16gb", 8, 16, False),
    ("DigitalOcean", "c-4", 4, 8, True), ("DigitalOcean", "c-8", 8, 16, True), ("DigitalOcean", "c-16", 16, 32, True),
]
HEADROOM = 0.7           # plan for 70 % CPU: bursts, GC, a reconnect storm
SHARED_VCPU = 0.8        # a shared vCPU delivers less than a dedicated one under neighbours' load
MEETING_SIZE = 6


def knee(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last good step (most streams among ok steps)."""
    ok = [r for r in rows if r["ok"]]
    return max(ok, key=lambda r: r["streams"]) if ok else None


def mcores_per_stream(rows: list[dict[str, Any]], min_streams: int = 20) -> float | None:
    """Median LiveKit millicores per forwarded stream over good steps big enough to measure."""
    vals = [r["mcores_per_stream"] for r in rows if r["ok"] and r["streams"] >= min_streams
            and r.get("livekit_cores", 0) > 0]
    return statistics.median(vals) if vals else None


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col])]
    return [m[i][n] / m[i][i] for i in range(n)]


def memory_fit(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(MiB per room, MiB per participant) of LiveKit's Go heap under load.

    Least squares of heap = base + a*rooms + b*participants over the good steps: the intercept
    absorbs the idle heap, which an idle Go server reports with stale garbage (no GC runs
    without allocation), so no single idle reading is trusted. Shapes differ in participants
    per room (2, the meeting size, listeners + 1), which is what separates a from b.
    """
    pts = [(1.0, float(r["step"]["rooms"]), float(r["step"]["participants"]), float(r["livekit_heap_mib"]))
           for r in rows if r["ok"] and r.get("livekit_heap_mib")]
    if len(pts) < 3:
        return None
    ata = [[sum(p[i] * p[j] for p in pts) for j in range(3)] for i in range(3)]
    atb = [sum(p[i] * p[3] for p in pts) for i in range(3)]
    sol = _solve(ata, atb)
    if sol is not None and sol[1] >= 0 and sol[2] >= 0:
        return sol[1], sol[2]
    # Rooms and participants not separable (one shape only): everything per participant.
    ata2 = [[sum(p[i] * p[j] for p in pts) for j in (0, 2)] for i in (0, 2)]
    atb2 = [sum(p[i] * p[3] for p in pts) for i in (0, 2)]
    sol2 = _solve(ata2, atb2)
    return (0.0, max(0.0, sol2[1])) if sol2 else None


@dataclass
class Costs:
    mcores_call: float               # LiveKit millicores per forwarded stream, 1:1 rooms
    mcores_meeting: float            # the same in meetings (several streams share a publisher)
    kbps_per_stream: float           # what the node sends per forwarded stream (all overheads)
    mib_per_room: float              # LiveKit's live Go heap
    mib_per_participant: float
    conv_cores_offline: float | None  # agent + speech server per conversation
    conv_cores_external: float | None  # agent worker only (STT/LLM/TTS elsewhere)
    conv_mib: float | None            # agent memory per conversation
    conv_latency_ok: int | None       # conversations on this node before p95 > limit
    base_mib: float                   # idle node: LiveKit + agent + speech + the rest


# Go's collector lets the heap grow to twice the live heap before collecting (GOGC=100), so
# plan resident memory at twice the live heap the fit measures.
RSS_PER_LIVE_HEAP = 2.0


def conversation_costs(levels: list[dict[str, Any]]) -> tuple[float | None, float | None, float | None]:
    """Per conversation: (offline cores, external cores, MiB) from the busiest level where every call worked."""
    good = [lv for lv in levels if lv["ok"] and lv["ok"] == lv["trips"] and lv["concurrency"] > 0]
    if not good:
        return None, None, None
    top = max(good, key=lambda lv: lv["concurrency"])
    # Callers hold conversations back to back, so `concurrency` is the conversations in progress.
    c = top["concurrency"]
    offline = (top["agent_cores"] + top["speech_cores"]) / c
    external = top["agent_cores"] / c
    mib = max(0.0, top["agent_mem_peak_mib"] - top["agent_mem_idle_mib"]) / c
    return offline, external, mib


def sizing_rows(c: Costs) -> list[dict[str, Any]]:
    rows = []
    for provider, kind, vcpu, gib, dedicated in SERVERS:
        cores = vcpu * HEADROOM * (1.0 if dedicated else SHARED_VCPU)
        mem = gib * 1024 - c.base_mib
        per_call_stream = 2 * c.mcores_call / 1000
        per_call_mem = (c.conv_mib or 0.0) + RSS_PER_LIVE_HEAP * (c.mib_per_room + 2 * c.mib_per_participant)
        offline = external = None
        if c.conv_cores_offline:
            offline = int(min(cores / (c.conv_cores_offline + per_call_stream), mem / max(1.0, per_call_mem)))
        if c.conv_cores_external:
            external = int(min(cores / (c.conv_cores_external + per_call_stream), mem / max(1.0, per_call_mem)))
        per_participant_cores = (MEETING_SIZE - 1) * c.mcores_meeting / 1000
        per_participant_mib = RSS_PER_LIVE_HEAP * (c.mib_per_participant + c.mib_per_room / MEETING_SIZE)
        meeting = int(min(cores / per_participant_cores, mem / max(0.01, per_participant_mib)))
        rows.append({"provider": provider, "type": kind, "vcpu": vcpu, "gib": gib, "dedicated": dedicated,
                     "calls_offline": offline, "calls_external": external, "meeting_participants": meeting})
    return rows


def sizing_markdown(c: Costs, measured_on: str) -> str:
    def n(v: int | None) -> str:
        return "—" if v is None else f"{v:,}"

    lines = [
        "## Sizing",
        "",
        f"Derived from measured costs ({measured_on}): LiveKit {c.mcores_call:.2f} millicores per forwarded "
        f"audio stream in 1:1 rooms, {c.mcores_meeting:.2f} in meetings, {c.kbps_per_stream:.0f} kbit/s per "
        f"stream at the node, a live Go heap of {c.mib_per_participant:.2f} MiB per participant + "
        f"{c.mib_per_room:.2f} MiB per room (resident ≈ {RSS_PER_LIVE_HEAP:.0f}×); an agent conversation "
        + (f"{c.conv_cores_offline:.2f} cores with the offline speech backends, "
           f"{c.conv_cores_external:.2f} cores with external STT/LLM/TTS, {c.conv_mib:.0f} MiB"
           if c.conv_cores_offline is not None else "(not measured)")
        + f"; an idle node {c.base_mib:.0f} MiB. `make bench-load ENV=<env>` re-measures on your own servers.",
        "",
        "| provider | type | vCPU / RAM | 1:1 agent calls, offline speech | 1:1 agent calls, external STT/LLM/TTS "
        f"| audio participants (meetings of {MEETING_SIZE}) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sizing_rows(c):
        kind = f"{r['vcpu']} {'dedicated' if r['dedicated'] else 'shared'} / {r['gib']} GB"
        lines.append(f"| {r['provider']} | {r['type']} | {kind} | {n(r['calls_offline'])} | "
                     f"{n(r['calls_external'])} | {n(r['meeting_participants'])} |")
    per10 = 10 * (MEETING_SIZE - 1) * c.mcores_meeting / 1000
    lines += [
        "",
        "| figure | seed's rule of thumb | LiveKit's benchmark | measured here |",
        "|---|---|---|---|",
        f"| bandwidth per audio stream | 50–100 kbit/s | — | {c.kbps_per_stream:.0f} kbit/s (Opus ~32 kbit/s + "
        "RTP/SRTP/UDP/IP; RED from browsers roughly doubles it) |",
        f"| CPU per 10 audio participants | ~0.5 core | — | {per10:.2f} core (meetings of {MEETING_SIZE}) |",
        f"| forwarded streams per core | (\"100 audio streams per VPS\") | ~2,300 (10 → 3,000 on 16 cores, ~80 %) | "
        f"{1000 / c.mcores_meeting:,.0f} in meetings, {1000 / c.mcores_call:,.0f} in 1:1 rooms |",
        f"| memory | 512 MB + 50 MB per active room | — | {c.base_mib:.0f} MiB idle node + "
        f"{RSS_PER_LIVE_HEAP * c.mib_per_room:.2f} MiB per room + {RSS_PER_LIVE_HEAP * c.mib_per_participant:.2f} MiB "
        f"per participant (LiveKit resident)"
        + (f" + {c.conv_mib:.0f} MiB per agent conversation" if c.conv_mib else "") + " |",
        "",
        "What bounds each number: offline-speech calls are bound by CPU (Whisper and piper per turn; "
        "latency, not throughput, is what degrades first: voice-to-voice p95 grows with every "
        "concurrent call) and by `AGENT_MAX_JOBS`; external-speech calls by the worker's CPU "
        "(VAD and WebRTC per call) and its memory per job process; meeting participants by LiveKit's "
        f"CPU per forwarded stream (a participant in a meeting of {MEETING_SIZE} receives "
        f"{MEETING_SIZE - 1} streams), then by bandwidth. Plans take {HEADROOM:.0%} of the CPU, "
        f"shared vCPUs at {SHARED_VCPU:.0%} of a dedicated one; RAM less the idle node.",
    ]
    return "\n".join(lines)


def finite(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
