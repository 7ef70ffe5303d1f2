"""What the deploy tells the operator: one line per operation, a summary, deploy-last.json."""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from deploy.deploy import TASK_OF
from infra.outputs import EnvPaths


class Heartbeat:
    """While one step runs longer than `every` seconds, says so every `every` seconds: a first
    deploy's venv install takes half a minute, and a stalled command must not look like a hang of
    the deploy itself (a CI deploy once sat silent for 20 minutes on an apt fetch)."""

    def __init__(self, every: float = 30.0, say: Callable[[str], None] = lambda line: print(line, flush=True)):
        self.every, self.say = every, say
        self._label: str | None = None
        self._since = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, label: str) -> None:
        with self._lock:
            self._label, self._since = label, time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deploy-heartbeat", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._label = None

    def _run(self) -> None:
        while not self._wake.wait(self.every):
            with self._lock:  # said under the lock: once stop() returns, nothing more of that step
                if self._label is not None and time.monotonic() - self._since >= self.every:
                    self.say(f"      ... still running: {self._label} ({time.monotonic() - self._since:.0f} s)")


@dataclass
class Report:
    """pyinfra callbacks -> one printed line per operation that changed or failed."""

    verbose: bool = False
    connect_errors: dict[str, str] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, dict] = field(default_factory=dict)
    count: int = 0
    total: int = 0
    seen: set = field(default_factory=set)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)

    def handler(self) -> Any:
        from pyinfra.api.state import BaseStateCallback

        report = self

        class _Handler(BaseStateCallback):
            @staticmethod
            def host_connect_error(state, host, error):
                report.connect_errors[host.name] = str(error)

            @staticmethod
            def operation_start(state, op_hash):
                report.operation_start(state, op_hash)

            @staticmethod
            def operation_end(state, op_hash):
                report.operation_end(state, op_hash)

        return _Handler()

    def fail(self, host: str, operation: str, stderr: str) -> None:
        self.failed[host] = {"operation": operation, "stderr": stderr, "stdout": ""}

    def record(self, state, op_hash) -> dict[str, dict[str, list[str]]]:
        """{operation name: {"changed": [hosts], "failed": [hosts], "ok": [hosts]}} of one step."""
        result: dict[str, dict[str, list[str]]] = {}
        for host in state.inventory:
            data = state.ops.get(host, {}).get(op_hash)
            if data is None or not data.operation_meta.is_complete():
                continue
            name = f"{TASK_OF.get((host.name, op_hash), '?')}: {data.global_arguments.get('name') or '?'}"
            entry = result.setdefault(name, {"changed": [], "failed": [], "ok": []})
            meta = data.operation_meta
            if not meta.did_succeed(_raise_if_not_complete=False):
                entry["failed"].append(host.name)
                self.failed[host.name] = {"operation": name, "stderr": meta.stderr[-2000:],
                                          "stdout": meta.stdout[-1000:]}
            elif meta.did_change():
                entry["changed"].append(host.name)
                self.changed.setdefault(host.name, []).append(name)
            else:
                entry["ok"].append(host.name)
        self.seen.add(op_hash)
        return result

    def show(self, label: str, result: dict[str, dict[str, list[str]]]) -> None:
        for name, entry in result.items():
            status = ""
            if entry["changed"]:
                status += f" changed on {', '.join(entry['changed'])}"
            if entry["failed"]:
                status += f" FAILED on {', '.join(entry['failed'])}"
            if status or self.verbose:
                print(f"[{label}/{self.total}] {name}:{status or ' ok'}", flush=True)

    def finish(self, state) -> None:
        """Record operations whose end callback never came (pyinfra stops when no host is left)."""
        for op_hash in state.get_op_order():
            if op_hash not in self.seen:
                result = self.record(state, op_hash)
                self.show("  -", {k: v for k, v in result.items() if v["failed"]})

    def operation_start(self, state, op_hash) -> None:
        names = {f"{TASK_OF.get((h.name, op_hash), '?')}: {d.global_arguments.get('name') or '?'}"
                 for h in state.inventory if (d := state.ops.get(h, {}).get(op_hash)) is not None}
        self.heartbeat.start(f"[{self.count + 1:3d}/{self.total}] {' / '.join(sorted(names)) or '?'}")

    def operation_end(self, state, op_hash) -> None:
        self.heartbeat.stop()
        self.count += 1
        self.show(f"{self.count:3d}", self.record(state, op_hash))

    def summary(self, env: str, seconds: float) -> int:
        """Print the summary, write deploy-last.json; the exit code (4 when a host failed)."""
        n_changed = sum(len(v) for v in self.changed.values())
        data = {"env": env, "seconds": round(seconds, 1), "operations": self.total,
                "changed": self.changed, "failed": self.failed}
        target = EnvPaths(env).deploy_last
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nsummary: {self.total} operations, {n_changed} changed, {len(self.failed)} host(s) failed, "
              f"{seconds:.1f}s")
        for host, names in sorted(self.changed.items()):
            tasks: dict[str, int] = {}
            for n in names:
                task = n.split(": ")[0]
                tasks[task] = tasks.get(task, 0) + 1
            print(f"  {host}: {len(names)} changed — " + ", ".join(f"{t}: {c}" for t, c in tasks.items()))
        for host, failure in sorted(self.failed.items()):
            print(f"  {host}: FAILED at {failure['operation']}:\n    "
                  + (failure["stderr"] or failure["stdout"]).strip().replace("\n", "\n    "), file=sys.stderr)
        return 4 if self.failed else 0
