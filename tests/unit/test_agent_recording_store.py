"""The recordings directory: crash marking, retention, ids that cannot escape, files that survive a kill."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from agent.audio_files import OggOpusWriter, duration_s, iter_pcm, mixdown
from agent.recording_store import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]


def test_agent_recording_store_marks_a_dead_writer_partial(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    rec = store.create(kind="meeting", room="r", room_sid=None)
    (rec.path / "01-a.ogg").write_bytes(b"OggS")
    rec.manifest["tracks"] = [{"file": "01-a.ogg", "participant": "a", "offset_s": 0.0, "ended_s": None}]
    rec.manifest["pid"] = 2 ** 22 + 17  # no such process
    rec.heartbeat(time.time() - 60)
    with caplog.at_level(logging.WARNING):
        assert store.mark_stale(store.open(rec.id), stale_after_s=30)
    m = store.open(rec.id).manifest
    assert (m["status"], m["partial_reason"]) == ("partial", "recorder_stopped")
    assert m["ended_at"] >= m["heartbeat_at"] and m["tracks"][0]["ended_s"] is not None
    assert "marked partial" in caplog.text


def test_agent_recording_store_leaves_a_live_writer_alone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rec = store.create(kind="meeting", room="r", room_sid=None)  # pid: this process, alive
    rec.heartbeat(time.time() - 120)
    assert not store.mark_stale(store.open(rec.id), stale_after_s=30)  # slow (a busy machine), not dead
    rec.heartbeat(time.time() - 301)
    assert store.mark_stale(store.open(rec.id), stale_after_s=30)  # hung for 10x the limit


def test_agent_recording_store_a_reused_pid_is_not_the_writer(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rec = store.create(kind="meeting", room="r", room_sid=None)
    rec.manifest["pid_start"] = (rec.manifest["pid_start"] or 0) + 1  # same pid, another process
    rec.heartbeat(time.time() - 60)
    assert store.mark_stale(store.open(rec.id), stale_after_s=30)


def test_agent_recording_store_retention_deletes_only_old_finished_recordings(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = store.create(kind="meeting", room="old", room_sid=None, started_at=time.time() - 40 * 86400)
    old.finish("complete", ended_at=time.time() - 40 * 86400)
    running = store.create(kind="meeting", room="running", room_sid=None, started_at=time.time() - 40 * 86400)
    fresh = store.create(kind="meeting", room="fresh", room_sid=None)
    fresh.finish("complete")
    assert store.sweep_retention(30) == [old.id]
    assert {r.id for r in store.all()} == {running.id, fresh.id}
    assert store.sweep_retention(0) == []  # 0 keeps everything


@pytest.mark.parametrize("evil", ["../etc", "..", "a/b", "", ".hidden", "x" * 81, "rec\x00"],
                         ids=["dotdot-dir", "dotdot", "slash", "empty", "hidden", "long", "nul"])
def test_agent_recording_store_ids_cannot_name_anything_outside(tmp_path: Path, evil: str) -> None:
    with pytest.raises(StoreError):
        Store(tmp_path / "recordings").path_of(evil)


def test_agent_recording_store_refuses_a_planted_symlink(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (root / "rec-planted").symlink_to(tmp_path / "secret")
    with pytest.raises(StoreError):
        Store(root).path_of("rec-planted")
    assert [r.id for r in Store(root).all()] == []


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from agent.audio_files import OggOpusWriter
    w = OggOpusWriter(Path(sys.argv[1]), 48000, 24000)
    t = np.arange(480) / 48000
    n = 0
    while True:  # 10 ms frames of a tone, as a recorder writes them, until killed
        w.write((8000 * np.sin(2 * np.pi * 300 * (t + n * 0.01))).astype(np.int16))
        n += 1
        if n % 100 == 0:
            print(n // 100, flush=True)
""")


def test_agent_recording_file_killed_mid_write_plays_what_was_recorded(tmp_path: Path) -> None:
    path = tmp_path / "01-alice.ogg"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # seconds of audio handed to the writer
        if int(line) >= 5:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    played = duration_s(path)
    assert 4.4 <= played <= 6.0, played  # at most one page (0.5 s) plus a frame lost
    samples = np.concatenate(list(iter_pcm(path, 16000)))
    assert float(np.sqrt(np.mean(samples[16000:32000].astype(float) ** 2))) > 3000  # the tone, not noise


def test_agent_recording_mixdown_places_tracks_on_one_timeline(tmp_path: Path) -> None:
    tone = (8000 * np.sin(2 * np.pi * 300 * np.arange(48000) / 48000)).astype(np.int16)
    for name in ("a.ogg", "b.ogg"):
        w = OggOpusWriter(tmp_path / name)
        w.write(tone)
        w.close()
    total = mixdown([(tmp_path / "a.ogg", 0.0, None), (tmp_path / "b.ogg", 3.0, None)], tmp_path / "mix.ogg")
    assert total == pytest.approx(4.0, abs=0.01)
    mix = np.concatenate(list(iter_pcm(tmp_path / "mix.ogg", 16000)))
    level = [float(np.sqrt(np.mean(mix[i * 8000:(i + 1) * 8000].astype(float) ** 2))) for i in range(8)]
    assert level[0] > 3000 and level[6] > 3000          # a at 0-1 s, b at 3-4 s
    assert level[3] < 300 and level[4] < 300            # silence between them
    assert not list(tmp_path.glob(".mix.ogg.tmp*"))


def test_agent_recording_files_are_not_world_readable(tmp_path: Path) -> None:
    rec = Store(tmp_path / "recordings").create(kind="meeting", room="r", room_sid=None)
    w = OggOpusWriter(rec.path / "01-a.ogg")
    w.close()
    modes = {p.name: p.stat().st_mode & 0o777 for p in (rec.path, rec.path / "manifest.json", rec.path / "01-a.ogg")}
    assert all(mode & 0o007 == 0 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


def test_agent_recording_store_finds_the_live_recording_of_a_room(tmp_path: Path) -> None:
    store = Store(tmp_path)
    live = store.create(kind="meeting", room="standup", room_sid=None)  # written by this (live) process
    done = store.create(kind="meeting", room="retro", room_sid=None)
    done.finish("complete")
    assert store.active_for("standup", 30).id == live.id
    assert store.active_for("retro", 30) is None and store.active_for("other", 30) is None
