"""A helper process of an e2e test inside one of the local cloud's network namespaces (a stand-in
for a service on the emulated internet: an HTTP receiver, a Home Assistant). It takes one JSON line
on stdin — its arguments, secrets included, never argv — and answers with JSON lines on stdout,
the first of which says it is ready."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class NamespaceProcess:
    def __init__(self, netns: str, argv: list[str], args: dict[str, Any], ready_timeout: float = 30) -> None:
        """Run `python <argv>` in `netns` (from the repository root), give it `args`, and wait
        (at most `ready_timeout` s) for its first line, kept as `ready`."""
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, *argv], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.close()
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.lines.get(timeout=ready_timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
