"""infra/n8n/install.py's steps: progress while a step runs, clear errors, a bound on each step, and
a complete install found again without running anything (the install itself: make n8n)."""
from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path

import pytest

from infra.n8n import install as inst


def test_a_long_step_says_it_is_still_running_and_its_end(monkeypatch: pytest.MonkeyPatch,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(inst, "HEARTBEAT_S", 0.2)
    inst.run(["sh", "-c", "sleep 0.7"], Path("/"), what="the step")
    err = capfd.readouterr().err
    assert err.count("==> the step still running") >= 2 and "==> the step done in" in err, err


def test_a_failing_step_names_its_command_and_exit_status() -> None:
    with pytest.raises(inst.InstallError, match=r"`sh -c exit 3` in / \(exit 3\)"):
        inst.run(["sh", "-c", "exit 3"], Path("/"))
    with pytest.raises(inst.InstallError, match="not found: install Node.js with npm"):
        inst.run(["/nonexistent/npm", "ci"], Path("/"))


def ends_within(pid: int, seconds: float) -> bool:
    """Whether process `pid` (not our child) has exited, or does within `seconds` (its pidfd
    becomes readable when it exits)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


def test_a_step_over_its_bound_is_killed_with_its_children_and_named(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(inst, "STEP_TIMEOUT", 0.6)
    monkeypatch.setattr(inst, "HEARTBEAT_S", 0.2)
    pid_file = tmp_path / "child"
    started = time.monotonic()
    with pytest.raises(inst.InstallError, match="did not finish in 1 s; check the host's npm registry"):
        inst.run(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path)
    assert time.monotonic() - started < 2.5
    child = int(pid_file.read_text())
    assert ends_within(child, 5), f"the step's child {child} outlived it"   # SIGKILL was sent


def test_a_complete_install_is_found_again_without_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    version = inst.check_lockfile()["n8n"]
    digest = inst.inputs_hash()[:12]
    done = tmp_path / f"{version}-{digest}"
    done.mkdir()
    (done / inst.STAMP).write_text(json.dumps({"inputs": digest}))
    monkeypatch.setenv("PATH", str(tmp_path))   # no npm: nothing may run
    assert inst.install(tmp_path) == inst.N8nInstall(done, version)
    # A half-made one (no stamp) is not an install.
    (done / inst.STAMP).unlink()
    assert inst.installed(tmp_path, digest, version) is None
