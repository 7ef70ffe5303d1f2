"""Run named steps with one progress line each (elapsed time), failing with a paste-ready command."""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence


class StepFailed(Exception):
    pass


@dataclass
class Progress:
    start: float = field(default_factory=time.monotonic)

    def line(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {msg}", flush=True)

    def run(self, name: str, fn: Callable[[], object]) -> object:
        t0 = time.monotonic()
        self.line(f"{name} ...")
        try:
            result = fn()
        except StepFailed as exc:
            self.line(f"{name} FAILED after {time.monotonic() - t0:.1f}s")
            raise StepFailed(f"failed to {name}: {exc}") from exc
        self.line(f"{name} done in {time.monotonic() - t0:.1f}s")
        return result


def command(argv: Sequence[str], *, env: dict[str, str] | None = None, capture: bool = False) -> str:
    """Run a command, streaming its output unless captured; on failure show it ready to paste."""
    proc = subprocess.run(list(argv), env=env, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        detail = f"\n{proc.stderr.strip()}" if capture and proc.stderr else ""
        raise StepFailed(f"exit {proc.returncode}: {shlex.join(argv)}{detail}")
    return proc.stdout if capture else ""


PYTHON = sys.executable
