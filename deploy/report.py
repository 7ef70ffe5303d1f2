"""What the deploy tells the operator: one line per operation, a summary, deploy-last.json."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from deploy.deploy import TASK_OF
from infra.outputs import EnvPaths


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

    def handler(self) -> Any:
        from pyinfra.api.state import BaseStateCallback

        report = self

        class _Handler(BaseStateCallback):
            @staticmethod
            def host_connect_error(state, host, error):
                report.connect_errors[host.name] = str(error)

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

    def operation_end(self, state, op_hash) -> None:
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
