"""One spoken round trip from the client side; prints a JSON result. Runs in .venv-agent.

    ip netns exec <client_netns> .venv-agent/bin/python -m agent.roundtrip_cli '<json>'
    ... -m agent.roundtrip_cli - < args.json      # the arguments on stdin (they hold tokens)

Arguments: url, tokens, ca_bundle, timeout, phrase; optional collect_ice (report the ICE
candidates seen), relay_only plus ice_servers [{urls, username, password}] (ICE may only use
these TURN servers: the SFU's own list is ignored), or turn_tls {host, port, server_name,
username, password}: ICE may only use that TURN server over TLS, through agent.tls_tunnel
(libwebrtc cannot be told to trust a local CA for TURN/TLS); slot {dir, slots, worker}: hold one
of the call slots in `dir` (agent.locks.slot) from the connect until the client left each room
(with `niced`: the client was started at that niceness and runs at 0 while it holds the slot).
With join_only the client speaks no phrase and loads no speech models: it joins the one token's
room, waits until the agent's audio arrives, prints {"joined": ...}, and stays until its stdin
closes (the arguments are then one JSON line on stdin).

The client's own voice and ears are the offline models in-process (piper, faster-whisper), so
it needs nothing but the LiveKit URL: its traffic is exactly what a user's would be.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from livekit import rtc

from agent.locks import slot
from agent.roundtrip import join_until, round_trip
from agent.speech.stt import SttConfig, Transcriber
from agent.speech.tts import Synthesizer, TtsConfig
from agent.tls_tunnel import TlsTunnel


class LocalSpeech:
    def __init__(self) -> None:
        self.tts = Synthesizer(TtsConfig.from_env())
        self.stt = Transcriber(SttConfig.from_env())

    async def synthesize(self, text: str) -> bytes:
        return await asyncio.to_thread(self.tts.wav, text)

    async def transcribe(self, wav: bytes) -> str:
        return await asyncio.to_thread(self.stt.transcribe, wav)


def rtc_config(args: dict[str, Any]) -> rtc.RtcConfiguration | None:
    """relay_only: ICE uses only relay candidates of `ice_servers` (e.g. one TURN/TLS server on 443)."""
    if not args.get("relay_only"):
        return None
    servers = [rtc.IceServer(urls=list(s["urls"]), username=s.get("username", ""), password=s.get("password", ""))
               for s in args.get("ice_servers", [])]
    if not servers:
        raise ValueError("relay_only needs ice_servers: the TURN servers the client may use")
    return rtc.RtcConfiguration(ice_transport_type=rtc.IceTransportType.TRANSPORT_RELAY, ice_servers=servers)


@contextlib.contextmanager
def ice_policy(args: dict[str, Any]) -> Iterator[tuple[rtc.RtcConfiguration | None, TlsTunnel | None]]:
    """The RTC configuration the arguments ask for, and the TLS tunnel when they name turn_tls:
    then ICE may use only that TURN server, reached over TLS through the tunnel (shared by
    this CLI and agent.callclient, so a session's round trip can take TURN/TLS too)."""
    turn_tls = args.get("turn_tls")
    if not turn_tls:
        yield rtc_config(args), None
        return
    tunnel = TlsTunnel(turn_tls["host"], int(turn_tls["port"]), turn_tls["server_name"], args.get("ca_bundle"))
    with tunnel as port:
        server = {"urls": [f"turn:127.0.0.1:{port}?transport=tcp"], "username": turn_tls["username"],
                  "password": turn_tls["password"]}
        yield rtc_config({**args, "relay_only": True, "ice_servers": [server]}), tunnel


async def main_async(args: dict[str, Any]) -> dict[str, Any]:
    with ice_policy(args) as (config, tunnel):
        out = await _trips(args, config)
    if tunnel is not None:
        out["turn_tls_connections"] = tunnel.connections
    return out


def _set_nice(value: int) -> None:
    """Set every thread's niceness (Linux keeps it per thread; the SDK's threads inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, int(tid), value)


@contextlib.contextmanager
def _in_call_priority(inner: contextlib.AbstractContextManager[object], waiting: int) -> Iterator[None]:
    with inner:
        _set_nice(0)
        try:
            yield
        finally:
            _set_nice(waiting)


def gate(args: dict[str, Any]) -> contextlib.AbstractContextManager[object] | None:
    """The call slot the arguments name, entered anew for each call (None: no slot). A client that
    was started niced (the slot's `niced`: its caller, running as root, started it so) runs at
    normal priority while it holds the slot and goes back to that niceness after."""
    spec = args.get("slot")
    if not spec:
        return None
    held = slot(Path(spec["dir"]), int(spec["slots"]), worker=spec.get("worker") or None)
    niced = spec.get("niced")
    return _in_call_priority(held, int(niced)) if niced is not None else held


async def _trips(args: dict[str, Any], config: rtc.RtcConfiguration | None) -> dict[str, Any]:
    if args.get("join_only"):
        (token,) = args["tokens"]
        joined = await join_until(args["url"], token, _stdin_closed, ca_bundle=args.get("ca_bundle"),
                                  rtc_config=config, timeout=float(args.get("timeout", 60)), gate=gate(args),
                                  on_joined=lambda s: print(json.dumps({"joined": round(s, 3)}), flush=True))
        return {"results": [{"ok": True, "agent_join_s": joined}]}
    speech = LocalSpeech()
    results = []
    for token in args["tokens"]:
        started = time.monotonic()
        try:
            r = await round_trip(args["url"], token, speech=speech, phrase=args.get("phrase", "turn on the lights"),
                                 ca_bundle=args.get("ca_bundle"), timeout=float(args.get("timeout", 60)),
                                 rtc_config=config, collect_ice=bool(args.get("collect_ice")), gate=gate(args))
            results.append({"ok": True, "greeting": r.greeting, "answer": r.answer, "latency_s": r.latency_s,
                            "agent_join_s": r.agent_join_s, "ice": r.ice})
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the caller as text
            notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}{notes}",
                            "elapsed": time.monotonic() - started})
    return {"results": results}


async def _stdin_closed() -> None:
    """Returns when stdin reaches its end (the caller closed it: time to leave the room)."""
    await asyncio.to_thread(sys.stdin.read)


def main() -> int:
    # One line: a caller of join_only keeps stdin open after it (its end means "leave").
    raw = sys.stdin.readline() if sys.argv[1:] == ["-"] else sys.argv[1]
    print(json.dumps(asyncio.run(main_async(json.loads(raw)))), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Every room is left and the result is out: end here, without the interpreter's teardown. The
    # SDK's atexit hook disposes its native runtime while libwebrtc's threads may still call back
    # into it; a client once aborted with no Python traceback ("tokio-rt-worker panicked … panic in
    # a function that cannot unwind"), and this teardown is the one native step left after the
    # result. The kernel closes the sockets either way.
    sys.stderr.flush()
    os._exit(code)
