"""The one step runner: named steps, one progress line when each starts and ends, elapsed time.

Used by `make up` / `make down` and by the local environment's own steps (indented under
"provision"), so every long step says what it is doing while it runs.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

PYTHON = sys.executable

#: (label, function returning a one-line detail or None)
Step = tuple[str, Callable[[], "str | None"]]


class StepFailed(Exception):
    pass


@dataclass
class Progress:
    """Prints `[elapsed] message`; `child()` indents the lines of nested steps."""

    start: float = field(default_factory=time.monotonic)
    indent: str = ""
    out: Callable[[str], None] = print

    def line(self, msg: str) -> None:
        self.out(f"[{time.monotonic() - self.start:6.1f}s] {self.indent}{msg}")
        sys.stdout.flush()

    def child(self) -> "Progress":
        return Progress(start=self.start, indent=self.indent + "  ", out=self.out)

    @staticmethod
    def quiet() -> "Progress":
        return Progress(out=lambda _m: None)


def run(progress: Progress, steps: Iterable[Step], *, errors: tuple[type[BaseException], ...] = (StepFailed,),
        on_failure: Callable[[str], None] | None = None) -> None:
    """Run `steps` in order; the first failure stops the run with StepFailed("failed to <label>: ...")."""
    for label, fn in steps:
        t0 = time.monotonic()
        progress.line(f"{label} ...")
        try:
            detail = fn()
        except errors as exc:
            progress.line(f"{label}: FAILED after {time.monotonic() - t0:.1f}s")
            if on_failure is not None:
                on_failure(label)
            raise StepFailed(f"failed to {label}: {exc}") from exc
        progress.line(f"{label}: {detail or 'done'} ({time.monotonic() - t0:.1f}s)")


def main_status(progress: Progress, steps: Iterable[Step], *,
                errors: tuple[type[BaseException], ...] = (StepFailed,)) -> int:
    """run() for a command's main(): 0, or 1 once the failure is printed ("error: failed to <label>: ...")."""
    try:
        run(progress, steps, errors=errors)
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def command(argv: Sequence[str], *, env: dict[str, str] | None = None, capture: bool = False,
            cwd: str | None = None) -> str:
    """Run a command, streaming its output unless captured; on failure show it ready to paste."""
    proc = subprocess.run(list(argv), env=env, text=True, cwd=cwd,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        detail = f"\n{proc.stderr.strip()}" if capture and proc.stderr else ""
        raise StepFailed(f"exit {proc.returncode}: {shlex.join(argv)}{detail}")
    return proc.stdout if capture else ""
