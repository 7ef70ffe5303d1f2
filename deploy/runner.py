"""Run the deploy's phases with pyinfra's API: state, connect, pre-flight, plan or run.

Exit codes: 0 converged · 2 the outputs/spec/manifest cannot drive a deploy · 3 a host is
unreachable or refuses the key (nothing was changed anywhere) · 4 an operation failed on a host.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from deploy import fastpath
from deploy.deploy import PHASES, TASK_OF, Phase
from deploy.inventory import DeployInputError, build
from deploy.report import Report
from deploy.tasks.certificates import CertificateMissing

CONNECT_TIMEOUT = 5


@dataclass
class Options:
    env: str
    limit: tuple[str, ...] = ()
    plan: bool = False
    verbose: bool = False


@contextmanager
def _connected(state: Any) -> Iterator[None]:
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.exceptions import PyinfraError

    try:
        try:
            connect_all(state)
        except PyinfraError:
            pass  # every host failed: reported by the caller from host.connected
        yield
    finally:
        try:
            disconnect_all(state)
        except Exception:  # noqa: BLE001 - a disconnect error must not hide the deploy's result
            pass


def _state(inventory: Any, limit: list[Any] | None, report: Report, parallel: int) -> Any:
    from pyinfra.api import Config, State

    state = State(inventory, Config(CONNECT_TIMEOUT=CONNECT_TIMEOUT, PARALLEL=max(1, parallel)), initial_limit=limit)
    state.add_callback_handler(report.handler())
    return state


def _unreachable(out: Any, state: Any, inventory: Any, report: Report) -> bool:
    missing = {h.name: report.connect_errors.get(h.name, "not connected")
               for h in inventory if state.is_host_in_limit(h) and not h.connected}
    for name, error in missing.items():
        node = out.node(name)
        print(f"deploy {out.env}: cannot reach {name} ({node.ssh_user}@{node.public_ip}:{node.ssh_port} "
              f"with key {node.ssh_key}): {error}", file=sys.stderr)
    if missing:
        print(f"deploy {out.env}: nothing was changed; fix SSH access and run again", file=sys.stderr)
    return bool(missing)


def _preflight(out: Any, state: Any) -> bool:
    """Refuse unpinned or unknown artifacts before a single operation is planned."""
    from pyinfra.api.facts import get_facts
    from pyinfra.facts.server import Arch

    for host, arch in get_facts(state, Arch).items():
        for name in ("livekit", "caddy"):
            try:
                host.data.vs.release(name, arch)
            except DeployInputError as exc:
                print(f"deploy {out.env}: {host.name}: {exc}", file=sys.stderr)
                return False
    return True


def _plan(state: Any) -> None:
    """Print each operation that would change something (pyinfra's OperationMeta.will_change)."""
    from pyinfra.context import ctx_host, ctx_state

    for op_hash in state.get_op_order():
        for host in state.inventory.get_active_hosts():
            data = state.ops[host].get(op_hash)
            if data is None:
                continue
            with ctx_state.use(state), ctx_host.use(host):
                if data.operation_meta.will_change:
                    print(f"would change on {host.name}: {TASK_OF.get((host.name, op_hash), '?')}: "
                          f"{data.global_arguments.get('name')}")


def _run_phase(phase: Phase, state: Any, kwargs: dict[str, Any], report: Report) -> None:
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops

    started = time.monotonic()
    print(f"planning {phase.name}: reading what the nodes have for each operation ...", flush=True)
    add_deploy(state, lambda: phase.run(**kwargs))
    planned = len(state.get_op_order())
    report.total += planned
    print(f"planned {phase.name}: {planned} operations ({time.monotonic() - started:.1f}s)", flush=True)
    try:
        run_ops(state)
    except PyinfraError:
        pass  # a failed host is recorded by report.finish
    report.finish(state)


def deploy(opts: Options) -> int:
    started = time.monotonic()
    logging.getLogger("pyinfra").setLevel(logging.INFO if opts.verbose else logging.CRITICAL)
    try:
        out, inventory = build(opts.env, connect_timeout=CONNECT_TIMEOUT)
    except DeployInputError as exc:
        print(f"deploy {opts.env}: {exc}", file=sys.stderr)
        return 2
    report = Report(verbose=opts.verbose)
    limit = [h for h in inventory if h.name in opts.limit] if opts.limit else None
    state = _state(inventory, limit, report, len(out.nodes))
    spec = out.spec
    print(f"deploy {opts.env}: {len(out.nodes)} node(s), livekit {spec.config.livekit_version}, "
          f"caddy {spec.config.caddy_version}, "
          f"{'SNI split on 443' if spec.sni_split else 'TURN/TLS on its own port'}", flush=True)
    with _connected(state):
        if _unreachable(out, state, inventory, report):
            return 3
        print(f"connected to {', '.join(h.name for h in state.active_hosts)} ({time.monotonic() - started:.1f}s)",
              flush=True)
        if not _preflight(out, state):
            return 2
        first, *later = PHASES
        from pyinfra.api.deploy import add_deploy
        try:
            if opts.plan:
                add_deploy(state, first.run)
                _plan(state)
                return 0
            _run_phase(first, state, {}, report)
        except DeployInputError as exc:
            print(f"deploy {opts.env}: {exc}", file=sys.stderr)
            return 2
        hosts = list(state.inventory.get_active_hosts())
        for phase in later:
            if report.failed:
                break
            selected = [h.name for h in phase.hosts(hosts)]
            if not selected:
                continue
            try:
                kwargs = phase.prepare(hosts) if phase.prepare else {}
            except CertificateMissing as exc:
                report.fail(hosts[0].name, f"{phase.name}: wait for the certificates", str(exc))
                break
            # A new pyinfra state per phase: a state runs its operations once.
            _out, inv2 = build(opts.env, connect_timeout=CONNECT_TIMEOUT)
            state2 = _state(inv2, [h for h in inv2 if h.name in selected], report, len(selected))
            with _connected(state2):
                _run_phase(phase, state2, kwargs, report)
    code = report.summary(opts.env, time.monotonic() - started)
    if code == 0:
        # The next deploy's one-SSH check compares against this; a node without a record converges fully.
        missed = fastpath.record(out, opts.limit)
        if missed:
            print(f"note: could not record the converged state on {', '.join(missed)}; the next deploy runs in full")
    return code
