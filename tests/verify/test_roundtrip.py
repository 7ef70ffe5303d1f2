"""The spoken round trip: a client speaks into a fresh room, the agent answers, the client hears it.

Runs under three network conditions for the client: normal; UDP blocked (media over ICE/TCP or
TURN/TCP); only TCP 443 (TURN over TLS on 443). Conditions need the client namespace of a local
environment; elsewhere only the normal condition runs.
"""
from __future__ import annotations

import json

import pytest

from infra.config import LOCAL_SPEECH_URL
from infra.outputs import Outputs
from infra.probes import netcond
from infra.probes.roundtrip import round_trips
from infra.spec import EnvSpec

HINTS = {
    "normal": "check the agent (systemctl status voicestack-agent voicestack-speech) and LiveKit's log",
    "udp-blocked": "media must fall back to ICE/TCP 7881 or TURN/TCP 3478: check those ports and coturn",
    "tcp443-only": "media must use TURN over TLS on 443: check the SNI router (nginx), coturn's TLS port "
                   "and the certificate for the TURN name",
}


def _record(outputs: Outputs, condition: str, result: dict) -> None:
    """Keep the last round trip per condition for `make up`'s summary."""
    path = outputs.paths.verify_results
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("round_trips", {})[condition] = {"latency_s": round(result["latency_s"], 2),
                                                     "answer": result["answer"]}
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("condition", list(netcond.RULES))
def test_voice_01_spoken_round_trip(outputs: Outputs, spec: EnvSpec, condition: str) -> None:
    if condition != "normal" and not outputs.client_netns:
        pytest.skip("network conditions need the client namespace of a local environment")
    if outputs.client_netns:
        with netcond.condition(outputs.client_netns, condition):
            (result,) = round_trips(outputs, 1, condition)
    else:
        (result,) = round_trips(outputs, 1, condition)
    assert result["ok"], f"no spoken round trip with {condition} network: {result['error']}; {HINTS[condition]}"
    assert "voice assistant" in result["greeting"].lower(), f"greeting heard as {result['greeting']!r}"
    if spec.config.llm_url == LOCAL_SPEECH_URL:
        # The node's own scripted responder: its exact answer proves STT -> LLM -> TTS understood.
        assert "turned on the lights" in result["answer"].lower(), (
            f"answer heard as {result['answer']!r}: the agent misunderstood or its speech is garbled")
    else:
        # Another LLM words its answer its own way: any spoken answer proves the pipeline.
        assert len(result["answer"].split()) >= 2, f"the agent's answer was heard as {result['answer']!r}"
    _record(outputs, condition, result)
    print(f"\n[{condition}] voice-to-voice latency {result['latency_s']:.2f}s, agent joined in "
          f"{result['agent_join_s']:.2f}s")
