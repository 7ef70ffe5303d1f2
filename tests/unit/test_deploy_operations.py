"""The project's own pyinfra operations and facts, tested as data (pyinfra's own habit).

One JSON file per case under tests/unit/deploy_ops/:
  <module>.<operation>/<case>.json   {"args", "facts": [{"fact", "args", "value"}],
                                      "commands": [...] (exact) or "commands_contain": [[fragments] per command]}
  facts/<module>.<Fact>/<case>.json  {"output": [lines], "value": parsed}
An operation's facts come from the file; a fact the operation asks for that the file does not
list fails the case, so every case states everything the operation looked at.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from pyinfra.context import ctx_host

DATA = Path(__file__).parent / "deploy_ops"
MODULES = {"_ops": "deploy.tasks._ops", "_facts": "deploy.tasks._facts", "certificates": "deploy.tasks.certificates",
           "agent": "deploy.tasks.agent", "redis": "deploy.tasks.redis"}


def _resolve(dotted: str) -> Any:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(MODULES[module]), name)


def _fact_key(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _norm(args: dict[str, Any]) -> str:
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}, sort_keys=True)


class FakeHost:
    """A host whose facts are the case's; asking for any other fact is an error."""

    name = "node-1"

    def __init__(self, facts: list[dict[str, Any]]) -> None:
        self.facts = {(f["fact"], _norm(f["args"])): f["value"] for f in facts}
        self.asked: list[tuple[str, str]] = []

    def get_fact(self, cls: type, **kwargs: Any) -> Any:
        key = (_fact_key(cls), _norm(kwargs))
        self.asked.append(key)
        if key not in self.facts:
            raise AssertionError(f"the case does not give fact {key[0]}({key[1]})")
        return self.facts[key]


def _cases(pattern: str) -> list[Path]:
    return sorted(DATA.glob(pattern))


OP_CASES = [p for p in _cases("*/*.json") if p.parent.name != "facts"]


@pytest.mark.parametrize("path", OP_CASES, ids=[f"{p.parent.name}/{p.stem}" for p in OP_CASES])
def test_operation_commands(path: Path) -> None:
    case = json.loads(path.read_text())
    op = _resolve(path.parent.name)
    fake = FakeHost(case.get("facts", []))
    with ctx_host.use(fake):
        commands = [str(c) for c in op._inner(**case["args"])]
    if "commands" in case:
        assert commands == case["commands"]
    else:
        assert len(commands) == len(case["commands_contain"]), commands
        for command, fragments in zip(commands, case["commands_contain"]):
            for fragment in fragments:
                assert fragment in command, f"{fragment!r} not in {command!r}"


FACT_CASES = _cases("facts/*/*.json")


@pytest.mark.parametrize("path", FACT_CASES, ids=[f"{p.parent.name}/{p.stem}" for p in FACT_CASES])
def test_fact_parsing(path: Path) -> None:
    case = json.loads(path.read_text())
    fact = _resolve(path.parent.name)()
    assert fact.process(case["output"]) == case["value"]


# --- apt fetches: bounded and tried again (deploy/tasks/_ops.py bounded_fetch) -------------------
class _ClockHost(FakeHost):
    """A FakeHost that also takes pyinfra's host.noop (an operation that decided nothing is due)."""

    def __init__(self, facts: list[dict[str, Any]]) -> None:
        super().__init__(facts)
        self.noops: list[str] = []

    def noop(self, message: str) -> None:
        self.noops.append(message)


@pytest.mark.parametrize("age_s, refreshes", [(600, False), (7200, True)], ids=["fresh", "stale"])
def test_apt_update_refreshes_only_an_index_older_than_cache_time(age_s: int, refreshes: bool) -> None:
    from datetime import datetime, timedelta

    from deploy.tasks import _ops

    now = datetime(2026, 12, 2, 12, 0, 0)
    fake = _ClockHost([{"fact": "files.File", "args": {"path": _ops.APT_UPDATE_STAMP},
                        "value": {"mtime": now - timedelta(seconds=age_s)}},
                       {"fact": "server.Date", "args": {}, "value": now}])
    with ctx_host.use(fake):
        commands = [str(c) for c in _ops.apt_update._inner(cache_time=3600)]
    assert bool(commands) is refreshes and bool(fake.noops) is not refreshes, (commands, fake.noops)


def _run_bounded(command: str, monkeypatch: pytest.MonkeyPatch, timeout: int = 1) -> tuple[int, str, float]:
    import subprocess
    import time

    from deploy.tasks import _ops

    monkeypatch.setattr(_ops, "APT_FETCH_TIMEOUT", timeout)
    script = _ops.bounded_fetch(command, "the fetch").replace("sleep 5", "sleep 0.1")  # the pause between tries
    started = time.monotonic()
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr, time.monotonic() - started


def test_a_hung_apt_fetch_is_killed_and_tried_again_then_fails_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    code, err, seconds = _run_bounded("sleep 30", monkeypatch)
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("the fetch: attempt")] == [
        f"the fetch: attempt {i} of 3 failed or took over 1 s" for i in (1, 2, 3)]
    assert seconds < 20   # three bounded attempts, not one 30 s hang


def test_an_apt_fetch_that_fails_once_succeeds_on_the_next_attempt(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    code, err, _ = _run_bounded(f"sh -c 'test -e {marker} || {{ touch {marker}; exit 1; }}'", monkeypatch, timeout=30)
    assert code == 0 and err.strip() == "the fetch: attempt 1 of 3 failed or took over 30 s", err
