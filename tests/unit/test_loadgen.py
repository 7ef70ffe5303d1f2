"""The load generator against a real livekit-server on loopback: a few streams for a few seconds.

Builds bench/loadgen (Go; the first build fetches its pinned modules, a few minutes) and the
piper/Opus speech loop, starts livekit-server (LIVEKIT_SERVER_BIN, else the binary
`python -m infra.local livekit-bin` provides), and checks what an operator relies on when
reading a capacity run: everyone joins, every stream arrives at 50 packets a second with the
loop's bitrate, loss and jitter are measured, and the generator reports its own CPU. The
counting itself (gaps are loss, wraps and duplicates are not, RFC 3550 jitter) is unit-tested
in Go (`go test` in bench/loadgen), run here too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.capacity import build  # noqa: E402
from tests.conftest import LOOPBACK_KEY, LOOPBACK_SECRET, LiveKit  # noqa: E402

API_KEY, API_SECRET = LOOPBACK_KEY, LOOPBACK_SECRET  # the conftest livekit_server's pair


@pytest.fixture(scope="module")
def livekit(livekit_server: LiveKit) -> str:
    return livekit_server.ws_url


@pytest.fixture(scope="module")
def loadgen() -> tuple[Path, Path]:
    return build.loadgen_binary(), build.speech_loop()


def run(loadgen: tuple[Path, Path], url: str, *flags: str, secret: str = API_SECRET) -> tuple[int, list[dict[str, Any]], str]:
    binary, loop = loadgen
    env = dict(os.environ, LIVEKIT_API_KEY=API_KEY, LIVEKIT_API_SECRET=secret)
    proc = subprocess.run([str(binary), "--url", url, "--audio", str(loop), "--warmup", "1s", "--interval", "2s",
                           "--ready-timeout", "30s", *flags], env=env, capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


def by_name(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in events if e["event"] == name]
    assert found, f"no {name!r} event in {[e['event'] for e in events]}"
    return found[-1]


def test_loadgen_meeting_streams_arrive_whole(livekit: str, loadgen: tuple[Path, Path]) -> None:
    code, events, stderr = run(loadgen, livekit, "--shape", "meeting", "--rooms", "1", "--size", "3",
                               "--duration", "4s")
    assert code == 0, stderr[-2000:]
    ready, window = by_name(events, "ready"), by_name(events, "window_end")
    assert ready["complete"] and ready["connected"] == 3 and ready["subscribed"] == 6, ready
    assert window["streams"] == 6 and window["stalled_streams"] == 0, window
    # A 20 ms Opus loop: 50 packets a second per stream, ~32 kbit/s of RTP.
    assert 45 <= window["rx_pps_per_stream"] <= 55, window
    assert 15 <= window["rx_kbps_per_stream"] <= 60, window
    assert window["loss_pct"] < 1.0 and window["rx_packets"] > 0.9 * 6 * 50 * 4, window
    assert 0 <= window["jitter_ms_p95"] < 30, window
    assert window["loadgen_cpu_cores"] > 0, window
    assert by_name(events, "done")["join_errors"] == 0


def test_loadgen_listeners_hear_the_one_speaker(livekit: str, loadgen: tuple[Path, Path]) -> None:
    code, events, stderr = run(loadgen, livekit, "--shape", "broadcast", "--rooms", "1", "--size", "4",
                               "--duration", "3s")
    assert code == 0, stderr[-2000:]
    plan, window = by_name(events, "plan"), by_name(events, "window_end")
    assert plan["publishers"] == 1 and plan["forwarded_streams"] == 4, plan
    assert window["streams"] == 4 and window["loss_pct"] < 1.0, window


def test_loadgen_wrong_secret_reports_failed_joins(livekit: str, loadgen: tuple[Path, Path]) -> None:
    code, events, _ = run(loadgen, livekit, "--shape", "agent", "--rooms", "1", "--duration", "1s",
                          "--connect-timeout", "5s", secret="not-the-secret-of-this-server-000000")
    assert code == 0
    ready = by_name(events, "ready")
    assert not ready["complete"] and ready["join_errors"] == 2 and ready["connected"] == 0, ready
    assert "first_join_error" in ready


def test_loadgen_counting_unit_tests() -> None:
    go = os.environ.get("GO") or "/usr/local/go/bin/go"
    env = dict(os.environ, GOMODCACHE=str(build.CACHE / "gomod"), GOCACHE=str(build.CACHE / "gocache"),
               GOFLAGS="-mod=readonly -buildvcs=false", CGO_ENABLED="0")
    proc = subprocess.run([go, "test", "./..."], cwd=build.SRC, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
