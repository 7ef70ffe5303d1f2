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
