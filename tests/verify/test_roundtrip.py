"""The spoken round trip: a client speaks into a fresh room, the agent answers, the client hears it.

Runs under three network conditions for the client: normal; UDP blocked (media over ICE/TCP or
TURN/TCP); only TCP 443 (TURN over TLS on 443). Conditions need the client namespace of a local
environment; elsewhere only the normal condition runs. With only TCP 443 the client's TURN/TLS
goes through agent/tls_tunnel.py: the SDK's libwebrtc trusts only the roots compiled into it and
refuses the TURN certificate otherwise ("unknown ca"), while what crosses the network is the
same TURN over TLS to the TURN name on 443. The client's WebRTC stats show which
candidates it saw: LiveKit's must carry a node's public address whatever the networking model
(behind 1:1 NAT the interface address must never leak), and with only TCP 443 the media must
ride a relay candidate of the TURN node.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.locks import exclusive
from agent.speech.responder import heard_greeting
from infra import verify
from infra.config import LOCAL_SPEECH_URL
from infra.outputs import Outputs
from infra.probes import netcond
from infra.probes.roundtrip import condition_options, round_trips
from infra.spec import EnvSpec

HINTS = {
    "normal": "check the agent (systemctl status voicestack-agent voicestack-speech) and LiveKit's log",
    "udp-blocked": "media must fall back to ICE/TCP 7881 or TURN/TCP 3478: check those ports and coturn",
    "tcp443-only": "media must use TURN over TLS on 443: check the SNI router (nginx), coturn's TLS port, "
                   "the certificate for the TURN name and coturn's relay to LiveKit's public address",
}


def _record(outputs: Outputs, condition: str, result: dict) -> None:
    """Keep the last round trip per condition (and the ICE pairs it used) for `make up`'s summary.
    The trips run in concurrent workers: the read-modify-write holds a lock next to the file."""
    path = outputs.paths.verify_results
    with exclusive(path.with_name(f".{path.name}.lock")):
        _merge(path, condition, result)


def _merge(path: Path, condition: str, result: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    ice = result.get("ice") or {}
    data.setdefault("round_trips", {})[condition] = {
        "latency_s": round(result["latency_s"], 2), "answer": result["answer"],
        "ice_selected": {pc: seen.get("selected") for pc, seen in ice.items()},
        "ice_remote": sorted({f"{c['address']}:{c['port']}/{c['protocol']}" for seen in ice.values()
                              for c in seen.get("remote", [])})}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def check_candidates(outputs: Outputs, spec: EnvSpec, condition: str, ice: dict) -> None:
    """LiveKit's candidates carry public node addresses, the client's relay candidates the TURN node's;
    with only TCP 443 the media rides that relay."""
    public = {n.public_ip for n in outputs.nodes if "livekit" in n.roles}
    hidden = {n.interface_ip for n in outputs.nodes if n.interface_ip and n.interface_ip != n.public_ip}
    hidden |= {n.private_ip for n in outputs.nodes if n.private_ip}
    turn = {outputs.node(n.name).public_ip for n in spec.turn_name_nodes()}
    assert ice, f"[{condition}] the client reported no ICE candidates at all"
    for pc, seen in ice.items():
        remote = {c["address"] for c in seen.get("remote", [])}
        assert remote and remote <= public, (
            f"[{condition}] LiveKit's {pc} candidates carry {sorted(remote)}, not only its public node addresses "
            f"{sorted(public)}: set rtc.node_ip to the public address (use_external_ip false)")
        selected = seen.get("selected")
        assert selected, f"[{condition}] the {pc} connection has no selected candidate pair: {seen}"
        assert selected["remote"]["address"] in public, selected
        relays = {c["address"] for c in seen.get("local", []) if c["type"] == "relay"}
        leaked = (remote | relays) & hidden
        assert not leaked, (f"[{condition}] the client saw private/interface addresses {sorted(leaked)}: behind 1:1 "
                            "NAT LiveKit must advertise node_ip and coturn external-ip=<public>/<interface>")
        assert relays <= turn, f"[{condition}] relay candidates {sorted(relays)} are not the TURN node's {sorted(turn)}"
        if condition == "tcp443-only":
            # The selected local candidate came from the TURN server: a relay candidate, or a peer-
            # reflexive one learned through the relay (coturn sends to its own public address from its
            # interface address, so LiveKit on the TURN node answers with that address).
            local = selected["local"]
            assert local.get("url", "").startswith("turn:") and local["type"] in ("relay", "prflx") and relays, (
                f"[{condition}] media did not ride TURN on 443 of {sorted(turn)}: selected {selected}")


@pytest.mark.parametrize("condition", list(netcond.RULES))
def test_voice_01_spoken_round_trip(outputs: Outputs, spec: EnvSpec, condition: str) -> None:
    if condition != "normal" and not outputs.client_netns:
        pytest.skip("network conditions need the client namespace of a local environment")
    # The client holds one of the suite's call slots while it is in the call (infra/verify.py).
    (result,) = round_trips(outputs, 1, condition, collect_ice=True, slot=verify.call_slot_args(outputs),
                            **condition_options(outputs, condition))
    assert result["ok"], f"no spoken round trip with {condition} network: {result['error']}; {HINTS[condition]}"
    assert heard_greeting(result["greeting"]), f"greeting heard as {result['greeting']!r}"
    if spec.config.llm_url == LOCAL_SPEECH_URL:
        # The node's own scripted responder: its exact answer proves STT -> LLM -> TTS understood.
        assert "turned on the lights" in result["answer"].lower(), (
            f"answer heard as {result['answer']!r}: the agent misunderstood or its speech is garbled")
    else:
        # Another LLM words its answer its own way: any spoken answer proves the pipeline.
        assert len(result["answer"].split()) >= 2, f"the agent's answer was heard as {result['answer']!r}"
    if condition == "tcp443-only":
        assert result["turn_tls_connections"], "no TURN/TLS connection to the TURN name on 443 was made"
    check_candidates(outputs, spec, condition, result["ice"])
    _record(outputs, condition, result)
    print(f"\n[{condition}] voice-to-voice latency {result['latency_s']:.2f}s, agent joined in "
          f"{result['agent_join_s']:.2f}s")
