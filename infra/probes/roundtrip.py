"""Spoken round trips from the client side (agent/roundtrip_cli.py in the agent venv)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
from typing import Any

from agent.locks import WAITING_NICE
from agent.tokens import mint
from infra.outputs import ROOT, Outputs
from infra.probes import agent_dispatch, in_client_side
from infra.probes.turn import rest_credentials

AGENT_PY = ROOT / ".venv-agent" / "bin" / "python"


def round_trips(outputs: Outputs, count: int, condition: str = "normal", timeout: float = 60,
                phrase: str = "turn on the lights", rooms: list[str] | None = None, label: str | None = None,
                **options: Any) -> list[dict[str, Any]]:
    """`count` round trips from the client namespace of network `condition` (infra/probes/netcond.py),
    each in a fresh room named after `label` (default: the condition), or in `rooms`; one result
    dict per trip ({ok, greeting, answer, latency_s, ice...}). `options` go to agent.roundtrip_cli
    as they are: collect_ice, relay_only, ice_servers, turn_tls (see turn_tls())."""
    rooms = rooms or [f"verify-{label or condition}-{secrets.token_hex(4)}" for _ in range(count)]
    tokens = [mint(outputs.api_key, outputs.api_secret, f"verify-{secrets.token_hex(3)}", room, preset="speaker",
                   ttl=600, agent_name=agent_dispatch(outputs)) for room in rooms]
    args = {"url": outputs.livekit_url, "tokens": tokens, "ca_bundle": outputs.ca_bundle, "timeout": timeout,
            "phrase": phrase, **options}
    # The arguments hold tokens (and TURN credentials): stdin, never argv.
    client = [str(AGENT_PY), "-m", "agent.roundtrip_cli", "-"]
    if options.get("slot") and os.geteuid() == 0:
        # Niced until it holds its call slot (only root may take the priority back for the call);
        # the slot argument tells the client so.
        client = ["nice", "-n", str(WAITING_NICE), *client]
        args["slot"] = {**options["slot"], "niced": WAITING_NICE}
    argv = in_client_side(outputs, client, condition)
    proc = subprocess.run(argv, cwd=ROOT, input=json.dumps(args), capture_output=True, text=True,
                          timeout=120 + len(rooms) * timeout)
    if proc.returncode != 0:
        # Whether it got as far as its result tells a crash in a call from one at its exit.
        stage = "after printing its result" if proc.stdout.strip() else "before any result"
        raise AssertionError(f"round-trip client crashed (exit {proc.returncode}, {stage}): {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for result in out["results"]:
        result["turn_tls_connections"] = out.get("turn_tls_connections")
    return out["results"]


def turn_tls(outputs: Outputs, user: str = "verify", node: str | None = None) -> dict[str, Any]:
    """The roundtrip option for "ICE only through a TURN name over TLS on its TLS port": `node`'s
    TURN name (default: the first TURN node's). REST credentials of a username of its own:
    coturn's user-quota counts allocations per username, and concurrent checks must not share one."""
    username, password = rest_credentials(outputs.turn_secret, f"{user}-{secrets.token_hex(4)}")
    spec = outputs.spec
    hosts = spec.turn_hosts()
    host = hosts[node] if node else next(iter(hosts.values()))
    return {"host": host, "port": spec.config.turn_tls_port, "server_name": host, "username": username,
            "password": password}


def condition_options(outputs: Outputs, condition: str) -> dict[str, Any]:
    """What a round trip needs under a network condition (infra/probes/netcond.py): with only TCP 443
    open, ICE must be told to take the TURN name over TLS (libwebrtc does not do it by itself with
    a private CA), else it never connects ("wait_pc_connection timed out")."""
    return {"turn_tls": turn_tls(outputs)} if condition == "tcp443-only" else {}


class CallSession:
    """agent/callclient.py on the client side, for a whole test module: round trips without loading
    the client's speech models each time, and one live call whose room events are kept. It stands
    in the client namespace of network `condition` for its whole life.

        with CallSession(outputs) as s:
            s.round_trip("normal");  s.call();  s.speak();  s.room_events;  s.hangup()
    """

    def __init__(self, outputs: Outputs, ready_timeout: float = 180, condition: str = "normal") -> None:
        import queue
        import threading

        self.outputs = outputs
        self.condition = condition
        self.room_events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        argv = in_client_side(outputs, [str(AGENT_PY), "-m", "agent.callclient"], condition)
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self._lines.put(line)
            self._lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self._wait("ready", ready_timeout)

    def __enter__(self) -> "CallSession":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def _wait(self, event: str, timeout: float) -> dict[str, Any]:
        import queue
        import time

        end = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the call client sent no {event!r} within {timeout:.0f}s") from None
            if line is None:
                raise AssertionError(f"the call client ended (exit {self.proc.wait()}) before {event!r}")
            msg = json.loads(line)
            if msg.get("event") == "room":
                self.room_events.append(msg)
            elif msg.get("event") == event:
                return msg

    def _token(self, prefix: str, room: str | None = None) -> tuple[str, str]:
        """(token, room) for `room`, else a fresh room."""
        room = room or f"{prefix}-{secrets.token_hex(4)}"
        return mint(self.outputs.api_key, self.outputs.api_secret, f"{prefix}-{secrets.token_hex(3)}", room,
                    preset="speaker", ttl=3600, agent_name=agent_dispatch(self.outputs)), room

    def _target(self) -> dict[str, Any]:
        return {"url": self.outputs.livekit_url, "ca_bundle": self.outputs.ca_bundle}

    def round_trip(self, timeout: float = 60, **options: Any) -> dict[str, Any]:
        """One round trip in a fresh room under the session's network condition; `options` as for
        round_trips (condition_options gives the ones a condition needs)."""
        token, room = self._token(f"chaos-{self.condition}")
        self._send({"cmd": "round_trip", "token": token, "timeout": timeout, **self._target(), **options})
        return {**self._wait("round_trip", timeout + 60), "room": room}

    def call(self, timeout: float = 90, room: str | None = None) -> dict[str, Any]:
        """Join a call (a fresh room, or `room`, e.g. one created on a chosen node) and wait for
        the agent's greeting; the call stays up for speak() until hangup()."""
        token, room = self._token("longcall", room)
        self._send({"cmd": "call", "token": token, "timeout": timeout, **self._target()})
        return {**self._wait("call", timeout + 60), "room": room}

    def speak(self, phrase: str = "turn on the lights", timeout: float = 60) -> dict[str, Any]:
        self._send({"cmd": "speak", "phrase": phrase, "timeout": timeout})
        return self._wait("answer", timeout + 60)

    def hangup(self) -> dict[str, Any]:
        self._send({"cmd": "hangup"})
        return self._wait("hangup", 60)

    def drain_events(self) -> list[dict[str, Any]]:
        """Room events that arrived since the last command (without sending one)."""
        import queue

        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return self.room_events
            if line is None:
                return self.room_events
            msg = json.loads(line)
            if msg.get("event") == "room":
                self.room_events.append(msg)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"cmd": "quit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
