"""The capacity report's arithmetic: knees, the memory fit, sizing and the soak's memory slope."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.bench_soak import slope_per_hour  # noqa: E402
from bench.capacity import report  # noqa: E402
from bench.capacity.sfu import Step  # noqa: E402


def row(shape: str, rooms: int, size: int, ok: bool = True, heap: float = 0.0, cores: float = 0.1) -> dict:
    s = Step(shape, rooms, size)
    return {"ok": ok, "streams": s.streams, "step": {"rooms": rooms, "participants": s.participants},
            "livekit_heap_mib": heap, "livekit_cores": cores, "mcores_per_stream": 1000 * cores / s.streams}


@pytest.mark.parametrize("step, participants, streams", [
    (Step("agent", 10), 20, 20),
    (Step("meeting", 3, 6), 18, 90),
    (Step("broadcast", 1, 200), 201, 200),
], ids=["1:1", "meeting", "broadcast"])
def test_step_counts_participants_and_forwarded_streams(step: Step, participants: int, streams: int) -> None:
    assert (step.participants, step.streams) == (participants, streams)


def test_knee_is_the_largest_good_step_not_the_last() -> None:
    rows = [row("agent", 5, 0), row("agent", 10, 0), row("agent", 20, 0, ok=False), row("agent", 15, 0, ok=False)]
    assert report.knee(rows)["streams"] == 20
    assert report.knee([row("agent", 5, 0, ok=False)]) is None


def test_memory_fit_separates_rooms_from_participants_whatever_the_idle_heap() -> None:
    # heap = 137 MiB of stale idle garbage + 0.8 per room + 0.25 per participant
    steps = [("agent", 5, 0), ("agent", 20, 0), ("meeting", 2, 6), ("meeting", 8, 6), ("broadcast", 1, 100),
             ("broadcast", 1, 400)]
    rows = []
    for shape, rooms, size in steps:
        s = Step(shape, rooms, size)
        rows.append(row(shape, rooms, size, heap=137 + 0.8 * s.rooms + 0.25 * s.participants))
    per_room, per_participant = report.memory_fit(rows)
    assert per_room == pytest.approx(0.8, abs=1e-6) and per_participant == pytest.approx(0.25, abs=1e-6)


def test_sizing_grows_with_the_server_and_shrinks_with_the_cost() -> None:
    cheap = report.Costs(4.0, 2.0, 60, 0.5, 0.3, 0.8, 0.1, 150, 1, 1500)
    dear = report.Costs(8.0, 4.0, 60, 0.5, 0.3, 1.6, 0.2, 150, 1, 1500)
    rows = {r["type"]: r for r in report.sizing_rows(cheap)}
    assert rows["cx22"]["meeting_participants"] < rows["cx42"]["meeting_participants"] < rows["cx52"]["meeting_participants"]
    assert rows["cx22"]["calls_offline"] < rows["cx22"]["calls_external"]
    dear_rows = {r["type"]: r for r in report.sizing_rows(dear)}
    assert dear_rows["cx42"]["calls_offline"] < rows["cx42"]["calls_offline"]
    text = report.sizing_markdown(cheap, "test")
    assert "| Hetzner | cx22 |" in text and "50–100 kbit/s" in text and "2,300" in text


def test_soak_slope_is_per_hour_and_flat_memory_is_zero() -> None:
    assert slope_per_hour([(t, 500.0) for t in range(0, 1800, 60)]) == pytest.approx(0.0)
    assert slope_per_hour([(t, 500 + t / 60) for t in range(0, 1800, 60)]) == pytest.approx(60.0)
    assert slope_per_hour([(0, 1.0)]) is None
