"""infra/local/background.py: the cache builds of `up` overlap, report failures where they are
needed, and a long build is never silent."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from infra.local.background import Background, run_logged


def test_jobs_run_at_the_same_time_and_each_result_is_waited_for_where_needed() -> None:
    started = threading.Event()

    def first() -> str:
        # Finishes only if the second job runs meanwhile: one after the other would time out here.
        assert started.wait(10), "the second build did not start while the first was running"
        return "livekit built"

    def second() -> str:
        started.set()
        return "caddy built"

    builds = Background({"livekit": first, "caddy": second}, say=lambda _m: None)
    assert "livekit, caddy" in builds.start()
    assert builds.result("caddy") == "caddy built"
    assert builds.result("livekit") == "livekit built"
    builds.close()


def test_a_failed_build_raises_its_own_error_in_the_step_that_needs_it() -> None:
    def broken() -> None:
        raise RuntimeError("go install exited 1; see go-install-caddy.log")

    builds = Background({"caddy": broken, "wheelhouse": lambda: "ok"}, say=lambda _m: None)
    builds.start()
    assert builds.result("wheelhouse") == "ok"  # the other build is not affected
    with pytest.raises(RuntimeError, match="go-install-caddy.log"):
        builds.result("caddy")


def test_result_starts_the_jobs_when_nobody_did() -> None:
    builds = Background({"wheelhouse": lambda: 42}, say=lambda _m: None)
    assert builds.result("wheelhouse") == 42


def test_a_long_command_says_what_it_is_doing_and_logs_everything(tmp_path: Path) -> None:
    said: list[str] = []
    log = tmp_path / "logs" / "build.log"
    # The command itself takes a while (that is what is observed), printing as it goes.
    script = "echo 'go: downloading github.com/x/y v1.0.0'; sleep 0.6; echo 'compiling'; sleep 0.6; exit 3"
    rc = run_logged(["sh", "-c", script], log, "building caddy v2.11.4", said.append, heartbeat_s=0.25)
    assert rc == 3
    assert log.read_text().splitlines() == ["go: downloading github.com/x/y v1.0.0", "compiling"]
    assert said and all(line.startswith("building caddy v2.11.4: still running (") for line in said)
    assert any("go: downloading github.com/x/y" in line or "compiling" in line for line in said)
