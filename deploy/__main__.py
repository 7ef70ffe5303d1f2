"""`python -m deploy --env <env>`: converge every node of an environment over SSH.

Prints one line per operation (which hosts it changed), then a summary; writes the same
summary to `.stack/<env>/deploy-last.json` (benchmarks and tests read it). Exit codes:
0 converged · 2 the outputs/spec/manifest cannot drive a deploy · 3 a host is unreachable or
refuses the key (nothing was changed anywhere) · 4 an operation failed on a host.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # as pyinfra's own CLI does: SSH to several hosts concurrently

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from deploy.inventory import InventoryError, build  # noqa: E402
from infra.outputs import STACK_DIR  # noqa: E402

CONNECT_TIMEOUT = 5
CERT_WAIT_SECONDS = 180


@dataclass
class Progress:
    """pyinfra callbacks -> one printed line per operation."""

    verbose: bool = False
    connect_errors: dict[str, str] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, dict] = field(default_factory=dict)
    count: int = 0
    total: int = 0
    seen: set = field(default_factory=set)

    def handler(self):
        from pyinfra.api.state import BaseStateCallback

        progress = self

        class _Handler(BaseStateCallback):
            @staticmethod
            def host_connect_error(state, host, error):
                progress.connect_errors[host.name] = str(error)

            @staticmethod
            def operation_end(state, op_hash):
                progress.operation_end(state, op_hash)

        return _Handler()

    def record(self, state, op_hash) -> dict[str, dict[str, list[str]]]:
        """{operation name: {"changed": [hosts], "failed": [hosts], "ok": [hosts]}} of one step."""
        from deploy.deploy import TASK_OF

        result: dict[str, dict[str, list[str]]] = {}
        for host in state.inventory:
            data = state.ops.get(host, {}).get(op_hash)
            if data is None or not data.operation_meta.is_complete():
                continue
            # Each host's own name: in API mode pyinfra pairs the n-th operation of all hosts.
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


def _read_certificate(host, domain: str) -> tuple[str, str] | None:
    """(certificate chain, key) PEM that Caddy on `host` obtained for `domain`, waiting for it."""
    from pyinfra.facts.files import FileContents

    from deploy.tasks._ops import NewestFile
    from deploy.tasks.caddy import certificate_glob

    deadline = time.monotonic() + CERT_WAIT_SECONDS
    while True:
        path = host.get_fact(NewestFile, pattern=certificate_glob(domain))
        if path:
            return ("\n".join(host.get_fact(FileContents, path=path)) + "\n",
                    "\n".join(host.get_fact(FileContents, path=path[:-4] + ".key")) + "\n")
        if time.monotonic() > deadline:
            return None
        time.sleep(2)


def _share_certificates(args, state, config, progress: Progress) -> None:
    """Last pass with several nodes: the LiveKit and TURN certificates go from the node that obtained
    them (the one ACME validates, see inventory.NodeVars.certificate_node) to the others."""
    from pyinfra.api import State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops

    from deploy.deploy import _run
    from deploy.tasks.caddy import share_certificates
    from infra.spec import Role

    hosts = list(state.inventory.get_active_hosts())
    lk_leader = next((h for h in hosts if h.data.vs.is_certificate_node), None)
    turn_leader = next((h for h in hosts if h.data.vs.serves_turn_name), None)
    followers = [h.name for h in hosts if h.data.vs.certificate_relay
                 or (h.data.vs.node.has(Role.TURN) and not h.data.vs.serves_turn_name)]
    if not followers or lk_leader is None:
        return
    pems = {}
    for leader, domain in ((lk_leader, lk_leader.data.vs.cfg.livekit_host),
                           (turn_leader, lk_leader.data.vs.cfg.turn_host)):
        if leader is None:
            continue
        pems[domain] = _read_certificate(leader, domain)
        if pems[domain] is None:
            progress.failed[leader.name] = {"operation": f"caddy: wait for the certificate of {domain}", "stdout": "",
                                            "stderr": f"Caddy on {leader.name} has no certificate for {domain} after "
                                                      f"{CERT_WAIT_SECONDS}s; see 'journalctl -u caddy' there"}
            return
    cfg = lk_leader.data.vs.cfg
    _out, _spec, inventory = build(args.env, connect_timeout=CONNECT_TIMEOUT)
    state2 = State(inventory, config, initial_limit=[h for h in inventory if h.name in followers])
    state2.add_callback_handler(progress.handler())
    try:
        try:
            connect_all(state2)
            add_deploy(state2, lambda: _run("share", lambda: share_certificates(
                livekit_pem=pems[cfg.livekit_host], turn_pem=pems.get(cfg.turn_host))))
            progress.total += len(state2.get_op_order())
            run_ops(state2)
        except PyinfraError:
            pass  # a failed host is reported by finish()
        progress.finish(state2)
    finally:
        try:
            disconnect_all(state2)
        except Exception:  # noqa: BLE001 - disconnect errors must not hide the result
            pass


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="environment name (reads .stack/<env>/outputs.json)")
    parser.add_argument("--limit", action="append", default=[], help="only these node names (repeatable)")
    parser.add_argument("--plan", action="store_true", help="show what would change, change nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list unchanged operations")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.monotonic()
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.facts import get_facts
    from pyinfra.api.operations import run_ops
    from pyinfra.facts.server import Arch

    from deploy.deploy import converge
    from deploy.tasks.livekit import artifact_for

    logging.getLogger("pyinfra").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    try:
        out, spec, inventory = build(args.env, connect_timeout=CONNECT_TIMEOUT)
    except InventoryError as exc:
        print(f"deploy {args.env}: {exc}", file=sys.stderr)
        return 2
    progress = Progress(verbose=args.verbose)
    config = Config(CONNECT_TIMEOUT=CONNECT_TIMEOUT, PARALLEL=max(1, len(out.nodes)))
    state = State(inventory, config, initial_limit=None)
    state.add_callback_handler(progress.handler())
    if args.limit:
        state.limit_hosts = [h for h in inventory if h.name in args.limit]

    print(f"deploy {args.env}: {len(out.nodes)} node(s), livekit {spec.config.livekit_version}, "
          f"{'SNI split on 443' if spec.sni_split else 'TURN/TLS on its own port'}", flush=True)
    try:
        try:
            connect_all(state)
        except PyinfraError:
            pass  # every host failed; reported below
        unreachable = {h.name: progress.connect_errors.get(h.name, "not connected")
                       for h in inventory if state.is_host_in_limit(h) and not h.connected}
        if unreachable:
            for name, error in unreachable.items():
                node = next(n for n in out.nodes if n.name == name)
                print(f"deploy {args.env}: cannot reach {name} ({node.ssh_user}@{node.public_ip}:{node.ssh_port} "
                      f"with key {node.ssh_key}): {error}", file=sys.stderr)
            print(f"deploy {args.env}: nothing was changed; fix SSH access and run again", file=sys.stderr)
            return 3
        print(f"connected to {', '.join(h.name for h in state.active_hosts)} "
              f"({time.monotonic() - started:.1f}s)", flush=True)

        # Refuse unpinned or unknown artifacts before a single operation is planned.
        for host, arch in get_facts(state, Arch).items():
            try:
                artifact_for(host.data.vs, arch)
            except InventoryError as exc:
                print(f"deploy {args.env}: {host.name}: {exc}", file=sys.stderr)
                return 2

        try:
            add_deploy(state, converge)
        except InventoryError as exc:
            print(f"deploy {args.env}: {exc}", file=sys.stderr)
            return 2
        order = state.get_op_order()
        progress.total = len(order)
        planned = time.monotonic() - started
        if args.plan:
            for op_hash in order:
                hosts = [h.name for h in state.inventory.get_active_hosts()
                         if op_hash in state.ops[h] and state.ops[h][op_hash].operation_meta._maybe_is_change]
                from deploy.deploy import TASK_OF
                for h in hosts:
                    data = state.ops[next(x for x in state.inventory if x.name == h)][op_hash]
                    print(f"would change on {h}: {TASK_OF.get((h, op_hash), '?')}: {data.global_arguments.get('name')}")
            return 0
        print(f"planned {progress.total} operations ({planned:.1f}s)", flush=True)
        try:
            run_ops(state)
        except PyinfraError:
            pass  # every host failed; reported below
        progress.finish(state)
        if not progress.failed:
            _share_certificates(args, state, config, progress)
    finally:
        try:
            disconnect_all(state)
        except Exception:  # noqa: BLE001 - disconnect errors must not hide the result
            pass

    seconds = time.monotonic() - started
    n_changed = sum(len(v) for v in progress.changed.values())
    summary = {"env": args.env, "seconds": round(seconds, 1), "operations": progress.total,
               "changed": progress.changed, "failed": progress.failed}
    target = STACK_DIR / args.env / "deploy-last.json"
    target.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary: {progress.total} operations, {n_changed} changed, {len(progress.failed)} host(s) failed, "
          f"{seconds:.1f}s")
    for host, names in sorted(progress.changed.items()):
        tasks: dict[str, int] = {}
        for n in names:
            task = n.split(": ")[0]
            tasks[task] = tasks.get(task, 0) + 1
        print(f"  {host}: {len(names)} changed — " + ", ".join(f"{t}: {c}" for t, c in tasks.items()))
    for host, failure in sorted(progress.failed.items()):
        print(f"  {host}: FAILED at {failure['operation']}:\n    "
              + (failure["stderr"] or failure["stdout"]).strip().replace("\n", "\n    "), file=sys.stderr)
    return 4 if progress.failed else 0


if __name__ == "__main__":
    sys.exit(main())
