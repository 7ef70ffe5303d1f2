"""Failure on purpose, on a local environment's machines: `kill -9` of a service's main process,
a reboot from inside, and how long the node takes to heal. Used by the chaos tests
(tests/e2e/test_chaos.py) and the recovery benchmark (bench/bench_recovery.py).

Each kill-and-wait runs on the node as one SSH command that times itself there (the machines
share the host's clock), so SSH latency is not in the figures:
  kill -> the unit is active again with a new main process -> the service answers its check.
The first spoken round trip after that is measured from the client side (infra/probes/roundtrip).
Power cuts are infra/local/power.py.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import Any

from infra.local import host, machines
from infra.local.names import EnvNames
from infra.outputs import Outputs
from infra.probes.roundtrip import CallSession, condition_options, round_trips
from infra.spec import TOKEN_PATH, EnvSpec, Node, Role

#: How long a killed unit may take to be active again and answer (RestartSec + a cold start of
#: the speech server, which loads Whisper and piper: ~20 s on a loaded 2-core host).
BACK_DEADLINE_S = 120


@dataclass(frozen=True)
class Target:
    unit: str
    check: str   # shell command on the node that succeeds once the service answers again; it may use
    #              $MainPID (the new main process) and $t0 (epoch seconds of the kill)
    what: str    # what a user loses while it is down


#: The agent worker is back in service once it registered with LiveKit again (a room created
#: before that gets no agent: LiveKit does not offer it again).
WORKER_REGISTERED = ("journalctl -u voicestack-agent.service --since \"@${t0%.*}\" -o cat --no-pager "
                     "| grep -q '\"registered worker\"'")


def targets(spec: EnvSpec, node: Node) -> list[Target]:
    """The services whose main process the chaos tests kill on `node`, each with its check."""
    p = spec.port
    curl = "curl -fsS -o /dev/null --max-time 3"
    https = f"{curl} https://{spec.config.livekit_host}/"   # DNS -> the node's 443 (nginx) -> Caddy -> LiveKit
    found: list[Target] = []
    if node.has(Role.LIVEKIT):
        found.append(Target("caddy.service", https, "HTTPS signalling, the token endpoint"))
        if spec.sni_split:
            found.append(Target("nginx.service", https, "everything on 443: HTTPS and TURN/TLS"))
        lk = f"{curl} http://127.0.0.1:{p('livekit-http').start}/"
        found.append(Target("livekit.service", f"{lk} && {WORKER_REGISTERED}" if node.has(Role.AGENT) else lk,
                            "every call on the node"))
    if node.has(Role.TURN):
        udp, tls = p("turn-udp").start, p("turn-tls").start
        found.append(Target("coturn.service", f"ss -Hlnu 'sport = :{udp}' | grep -q . && "
                                              f"ss -Hltn 'sport = :{tls}' | grep -q .", "TURN relays"))
    if node.has(Role.AGENT):
        found += [
            Target("voicestack-agent.service", f"{curl} http://127.0.0.1:{p('agent-health').start}/ && "
                                               f"{WORKER_REGISTERED}", "the agent joining new calls"),
            Target("voicestack-speech.service", f"{curl} http://127.0.0.1:{p('speech').start}/health",
                   "the agent's ears and voice"),
            Target("voicestack-token.service", f"{curl} http://127.0.0.1:{p('token').start}{TOKEN_PATH}/health",
                   "tokens for new callers"),
            Target("voicestack-webhooks.service", f"{curl} http://127.0.0.1:{p('webhooks').start}/health",
                   "webhook delivery"),
        ]
    return found


def kill_script(unit: str, check: str, deadline_s: int = BACK_DEADLINE_S) -> str:
    """Shell run on the node: kill -9 the unit's main process, wait until systemd has it active with a
    new main process and `check` passes; prints key=value lines (exit 1 at the deadline)."""
    u, c = shlex.quote(unit), shlex.quote(check)
    return (
        f"u={u}; old=$(systemctl show -p MainPID --value $u); "
        'if [ "${old:-0}" = 0 ]; then echo "error=$u has no main process"; exit 1; fi; '
        f'end=$(( $(date +%s) + {int(deadline_s)} )); t0=$(date +%s.%N); kill -9 "$old"; '
        'while :; do eval "$(systemctl show -p MainPID -p ActiveState -p NRestarts $u)"; '
        '[ "$ActiveState" = active ] && [ "$MainPID" != 0 ] && [ "$MainPID" != "$old" ] && break; '
        'if [ "$(date +%s)" -gt "$end" ]; then echo "error=$u not active again (ActiveState=$ActiveState)"; exit 1; fi; '
        "sleep 0.05; done; t1=$(date +%s.%N); export MainPID t0; "
        f'until sh -c {c} >/dev/null 2>&1; do '
        'if [ "$(date +%s)" -gt "$end" ]; then echo "error=$u active but its check fails"; exit 1; fi; '
        "sleep 0.2; done; t2=$(date +%s.%N); "
        'echo "old_pid=$old"; echo "new_pid=$MainPID"; echo "restarts=$NRestarts"; echo "killed_at=$t0"; '
        'awk -v a="$t0" -v b="$t1" -v c="$t2" \'BEGIN { printf "active_s=%.2f\\nanswers_s=%.2f\\n", b - a, c - a }\''
    )


def parse_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def kill_and_wait(names: EnvNames, node: Node, target: Target, deadline_s: int = BACK_DEADLINE_S) -> dict[str, Any]:
    """kill -9 the main process of `target` on `node`; its recovery figures (raises LocalEnvError)."""
    proc = machines.ssh(names, names.node_public_ip(node.index), kill_script(target.unit, target.check, deadline_s),
                        check=False, timeout=deadline_s + 60)
    got = parse_lines(proc.stdout)
    if proc.returncode != 0 or "error" in got:
        raise host.LocalEnvError(f"{target.unit} on {node.name} did not heal after kill -9: "
                                 f"{got.get('error') or proc.stderr.strip()}; see journalctl -u {target.unit} there")
    return {"unit": target.unit, "old_pid": int(got["old_pid"]), "new_pid": int(got["new_pid"]),
            "restarts": int(got["restarts"]), "killed_at": float(got["killed_at"]),
            "active_s": float(got["active_s"]), "answers_s": float(got["answers_s"])}


#: What the node's own responder answers to the round trip's "turn on the lights".
EXPECTED_ANSWER = "turned on the lights"


def round_trip_until(outputs: Outputs, deadline_s: float, condition: str = "normal", since: float | None = None,
                     session: CallSession | None = None, expect: str | None = EXPECTED_ANSWER) -> dict[str, Any]:
    """Spoken round trips until one passes or the deadline; the passing one with `after_s`: seconds
    from `since` (wall clock, e.g. the kill) to its end, and how many attempts it took. A trip
    passes when the answer was heard and (with `expect`) contains that text: on a loaded host the
    agent's speech may stutter and the tail of its greeting be taken for the answer. With a
    `session` standing in the same network condition the client process (and its speech models)
    is reused; otherwise each trip is a client of its own in the condition's namespace."""
    start = time.time() if since is None else since
    end = time.monotonic() + deadline_s
    attempts, last, errors = 0, {}, []
    options = condition_options(outputs, condition)
    while time.monotonic() < end:
        attempts += 1
        budget = max(20.0, min(60.0, end - time.monotonic()))
        if session is not None and session.condition == condition:
            last = session.round_trip(timeout=budget, **options)
        else:
            (last,) = round_trips(outputs, 1, condition, timeout=budget, **options)
        if last["ok"] and (expect is None or expect in last["answer"].lower()):
            return {**last, "attempts": attempts, "after_s": time.time() - start, "errors": errors}
        errors.append(str(last.get("error") or f"answer heard as {last.get('answer')!r}")[:300])
    return {**last, "ok": False, "attempts": attempts, "after_s": time.time() - start, "errors": errors}


def ready_script(targets_: list[Target], since: float, deadline_s: int = BACK_DEADLINE_S) -> str:
    """Shell run on the node: wait until every target's check passes; prints ready_s (from `since`)."""
    checks = " ".join(f"{t.unit}={shlex.quote(t.check)}" for t in targets_)
    return (f"t0={since:.3f}; export t0; end=$(( $(date +%s) + {int(deadline_s)} )); "
            f'for pair in {checks}; do unit=${{pair%%=*}}; check=${{pair#*=}}; '
            'MainPID=$(systemctl show -p MainPID --value "$unit"); export MainPID; '
            'until sh -c "$check" >/dev/null 2>&1; do '
            'if [ "$(date +%s)" -gt "$end" ]; then echo "error=$unit does not answer"; exit 1; fi; '
            "sleep 0.5; done; done; "
            'awk -v a="$t0" -v b="$(date +%s.%N)" \'BEGIN { printf "ready_s=%.2f\\n", b - a }\'')


def wait_ready(names: EnvNames, spec: EnvSpec, node: Node, since: float, deadline_s: int = BACK_DEADLINE_S) -> float:
    """Seconds from `since` (epoch) until every service of `node` answers its check (a node that
    booted is "running" for systemd seconds before the Python services have loaded their models)."""
    proc = machines.ssh(names, names.node_public_ip(node.index), ready_script(targets(spec, node), since, deadline_s),
                        check=False, timeout=deadline_s + 60)
    got = parse_lines(proc.stdout)
    if proc.returncode != 0 or "error" in got:
        raise host.LocalEnvError(f"{node.name} is not ready: {got.get('error') or proc.stderr.strip()}")
    return float(got["ready_s"])


def reboot(names: EnvNames, spec: EnvSpec, node: Node, deadline_s: float = 180) -> dict[str, Any]:
    """`systemctl reboot` inside `node`; seconds until nspawn ran again, SSH answered, systemd
    reported the system running and every service answered (raises LocalEnvError past a deadline)."""
    supervisor = machines.running_pid(names, node)
    if supervisor is None:
        raise host.LocalEnvError(f"{node.name} is not running; power it on first")
    before = set(host.children(supervisor))
    ip = names.node_public_ip(node.index)
    t0 = time.monotonic()
    machines.ssh(names, ip, "systemctl reboot", check=False, timeout=30)
    host.wait_until(f"{node.name} to be started again by its supervisor (pid {supervisor})",
                    lambda: bool(set(host.children(supervisor)) - before), deadline_s, interval=0.1)
    restarted = time.monotonic() - t0
    host.wait_until(f"SSH on {node.name} after the reboot", lambda: machines.ssh_ready(names, ip), deadline_s)
    ssh_s = time.monotonic() - t0
    state = machines.ssh(names, ip, "systemctl is-system-running --wait", check=False,
                         timeout=deadline_s).stdout.strip()
    running_s = time.monotonic() - t0
    ready_s = wait_ready(names, spec, node, since=time.time() - (time.monotonic() - t0))
    return {"restarted_s": restarted, "ssh_s": ssh_s, "running_s": running_s, "ready_s": ready_s, "state": state,
            "same_supervisor": machines.running_pid(names, node) == supervisor}
