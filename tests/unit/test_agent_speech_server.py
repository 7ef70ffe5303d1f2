"""The offline speech server, in process, with the real faster-whisper and piper models."""

from __future__ import annotations

import asyncio
import io
import json
import wave
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from agent.speech.responder import respond
from agent.speech_server import create_app, load_backends

Backends = tuple[Any, Any]


@pytest.fixture(scope="module")
def backends() -> Backends:
    # Loading both models takes ~2 s: once per module, shared by every test.
    return load_backends()


def with_client(backends: Backends, fn: Callable[[TestClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(create_app(*backends))) as client:
            return await fn(client)
    return asyncio.run(main())


def transcription_form(wav: bytes, **fields: str) -> FormData:
    form = FormData()
    form.add_field("file", wav, filename="audio.wav", content_type="audio/wav")
    form.add_field("model", "whisper-1")
    for name, value in fields.items():
        form.add_field(name, value)
    return form


def test_agent_speech_health_is_ok(backends: Backends) -> None:
    async def go(client: TestClient) -> int:
        return (await client.get("/health")).status
    assert with_client(backends, go) == 200


def test_agent_speech_tts_returns_24k_mono_wav(backends: Backends) -> None:
    async def go(client: TestClient) -> tuple[int, str, bytes]:
        resp = await client.post("/v1/audio/speech", json={
            "model": "tts-1", "input": "Hello there.", "voice": "alloy",
            "response_format": "wav", "speed": 1.0, "stream_format": "audio"})
        return resp.status, resp.content_type, await resp.read()
    status, ctype, body = with_client(backends, go)
    assert (status, ctype) == (200, "audio/wav")
    with wave.open(io.BytesIO(body)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert wav.getnframes() > 24000 * 0.3  # at least 0.3 s of audio


def test_agent_speech_tts_pcm_is_headerless_24k_samples(backends: Backends) -> None:
    async def go(client: TestClient) -> tuple[bytes, bytes, str]:
        body = {"model": "tts-1", "input": "Okay.", "voice": "alloy"}
        wav = await (await client.post("/v1/audio/speech", json={**body, "response_format": "wav"})).read()
        resp = await client.post("/v1/audio/speech", json={**body, "response_format": "pcm"})
        return wav, await resp.read(), resp.content_type
    wav, pcm, ctype = with_client(backends, go)
    assert ctype == "audio/pcm"
    with wave.open(io.BytesIO(wav)) as parsed:  # synthesis is deterministic by default
        assert parsed.readframes(parsed.getnframes()) == pcm


def test_agent_speech_tts_pcm_sends_the_first_clause_on_its_own(backends: Backends) -> None:
    """The first HTTP chunk is "Okay," alone: the agent can play it while the rest is made."""
    from agent.speech.tts import split_clauses

    async def go(client: TestClient) -> tuple[bytes, bytes]:
        resp = await client.post("/v1/audio/speech", json={
            "input": "Okay, I turned on the lights.", "response_format": "pcm"})
        chunks = [chunk async for chunk, _end in resp.content.iter_chunks()]
        return chunks[0], b"".join(chunks)
    first, whole = with_client(backends, go)
    _stt, tts = backends
    assert split_clauses("Okay, I turned on the lights.") == ["Okay,", "I turned on the lights."]
    assert split_clauses("It is 6:56 AM.") == ["It is 6:56 AM."]
    assert whole.startswith(first) and len(first) < len(whole)
    # The first chunk carries the first clause (chunks may be split further on the wire).
    assert len(first) <= len(next(tts.sentences_pcm("Okay, I turned on the lights.")))


def test_agent_speech_tts_starts_with_voice_not_silence(backends: Backends) -> None:
    import numpy as np

    from agent.roundtrip import voiced_span

    async def go(client: TestClient) -> bytes:
        resp = await client.post("/v1/audio/speech", json={"input": "Okay.", "response_format": "pcm"})
        return await resp.read()
    pcm = with_client(backends, go)
    start, _end = voiced_span(pcm, 24000)
    assert start <= 0.02  # piper alone starts with 50-60 ms of silence
    assert np.abs(np.frombuffer(pcm[:480], np.int16)).max() < 2000  # no hard click at the cut


def test_agent_speech_tts_then_stt_round_trip_keeps_the_words(backends: Backends) -> None:
    async def go(client: TestClient) -> dict[str, Any]:
        wav = await (await client.post("/v1/audio/speech", json={
            "model": "tts-1", "input": "turn on the lights", "voice": "alloy",
            "response_format": "wav"})).read()
        resp = await client.post("/v1/audio/transcriptions",
                                 data=transcription_form(wav, language="en", response_format="json"))
        assert resp.status == 200
        return await resp.json()
    body = with_client(backends, go)
    assert "turn on the lights" in body["text"].lower()


def test_agent_speech_stt_text_format_is_plain_text(backends: Backends) -> None:
    async def go(client: TestClient) -> tuple[str, str]:
        wav = await (await client.post("/v1/audio/speech", json={
            "input": "what time is it", "response_format": "wav"})).read()
        resp = await client.post("/v1/audio/transcriptions",
                                 data=transcription_form(wav, response_format="text"))
        return resp.content_type, await resp.text()
    ctype, text = with_client(backends, go)
    assert ctype == "text/plain"
    assert "what time is it" in text.lower()


@pytest.mark.parametrize(
    ("path", "kwargs", "fragment"),
    [
        ("/v1/audio/speech", {"json": {"input": ""}}, "missing 'input'"),
        ("/v1/audio/speech", {"json": {"input": "hi", "response_format": "mp3"}}, "use wav or pcm"),
        ("/v1/audio/transcriptions", {"data": FormData({"model": "whisper-1"}, default_to_multipart=True)},
         "missing 'file'"),
        ("/v1/audio/transcriptions", {"data": b"not audio"}, "multipart"),
        ("/v1/chat/completions", {"json": {"model": "x"}}, "missing 'messages'"),
    ],
    ids=["tts-empty-input", "tts-mp3", "stt-no-file", "stt-not-multipart", "chat-no-messages"],
)
def test_agent_speech_bad_requests_get_openai_errors(
        backends: Backends, path: str, kwargs: dict[str, Any], fragment: str) -> None:
    async def go(client: TestClient) -> tuple[int, dict[str, Any]]:
        resp = await client.post(path, **kwargs)
        return resp.status, await resp.json()
    status, body = with_client(backends, go)
    assert status == 400
    assert fragment in body["error"]["message"]


def test_agent_speech_stt_rejects_undecodable_audio(backends: Backends) -> None:
    async def go(client: TestClient) -> int:
        resp = await client.post("/v1/audio/transcriptions",
                                 data=transcription_form(b"RIFF garbage that is not audio"))
        return resp.status
    assert with_client(backends, go) == 400


CHAT = {"model": "voice-responder", "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Set the thermostat to 21 degrees."},
]}


def test_agent_speech_chat_non_streaming_shape(backends: Backends) -> None:
    async def go(client: TestClient) -> dict[str, Any]:
        return await (await client.post("/v1/chat/completions", json=CHAT)).json()
    body = with_client(backends, go)
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant",
                                 "content": "Okay, I set the thermostat to 21 degrees."}
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] > 0


def parse_sse(raw: str) -> list[Any]:
    events = [line[len("data: "):] for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_agent_speech_chat_streaming_chunk_shape(backends: Backends) -> None:
    async def go(client: TestClient) -> tuple[str, str]:
        resp = await client.post("/v1/chat/completions", json={
            **CHAT, "stream": True, "stream_options": {"include_usage": True}})
        return resp.content_type, await resp.text()
    ctype, raw = with_client(backends, go)
    assert ctype == "text/event-stream"
    chunks = parse_sse(raw)
    *content_chunks, usage_chunk = chunks
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert content_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all(c["choices"][0]["finish_reason"] is None for c in content_chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    assert text == "Okay, I set the thermostat to 21 degrees."
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0


def test_agent_speech_chat_without_user_message_greets(backends: Backends) -> None:
    async def go(client: TestClient) -> str:
        body = await (await client.post("/v1/chat/completions", json={
            "messages": [{"role": "system", "content": "Greet the user."}]})).json()
        return body["choices"][0]["message"]["content"]
    assert with_client(backends, go) == respond(None)


def test_agent_speech_stt_verbose_json_has_timed_segments(backends: Backends) -> None:
    """Recordings need segment times: speech placed 1.5 s into the file is reported there."""
    async def go(client: TestClient) -> dict[str, Any]:
        wav = await (await client.post("/v1/audio/speech", json={
            "input": "The garden party moves to Saturday.", "response_format": "wav"})).read()
        with wave.open(io.BytesIO(wav)) as src:
            rate, pcm = src.getframerate(), src.readframes(src.getnframes())
        padded = io.BytesIO()
        with wave.open(padded, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(bytes(int(rate * 1.5) * 2) + pcm + bytes(rate * 2))
        form = transcription_form(padded.getvalue(), response_format="verbose_json", prompt="")
        form.add_field("timestamp_granularities[]", "segment")
        resp = await client.post("/v1/audio/transcriptions", data=form)
        assert resp.status == 200
        return await resp.json()
    body = with_client(backends, go)
    assert body["task"] == "transcribe" and body["duration"] > 4
    assert body["segments"] and "garden" in body["text"].lower()
    first = body["segments"][0]
    assert 1.0 <= first["start"] <= 2.0 and first["end"] > first["start"]
    assert set(first) >= {"id", "start", "end", "text"}


def test_agent_speech_chat_extractive_summary_model_is_deterministic(backends: Backends) -> None:
    transcript = ("[00:01] Alice: The budget review starts now. We need the budget by Friday.\n"
                  "[00:05] Bob: The kitchen drawings are done.\n"
                  "[00:09] Alice: Send the budget to Carol.")
    request = {"model": "extractive-summary", "messages": [
        {"role": "system", "content": "Summarise."}, {"role": "user", "content": transcript}]}

    async def go(client: TestClient) -> list[str]:
        return [(await (await client.post("/v1/chat/completions", json=request)).json())
                ["choices"][0]["message"]["content"] for _ in range(2)]
    first, second = with_client(backends, go)
    assert first == second
    assert first.startswith("Participants: Alice, Bob.\nKey points:\n- Alice: The budget review starts now.")
    assert "- Bob: The kitchen drawings are done." in first


def test_agent_speech_stt_verbose_json_without_granularities_keeps_the_live_agent_shape(
        backends: Backends) -> None:
    """livekit's openai STT plugin asks whisper-1 for verbose_json: same text path as before."""
    async def go(client: TestClient) -> tuple[dict[str, Any], dict[str, Any]]:
        wav = await (await client.post("/v1/audio/speech", json={
            "input": "turn on the lights", "response_format": "wav"})).read()
        verbose = await (await client.post("/v1/audio/transcriptions", data=transcription_form(
            wav, response_format="verbose_json", language="en"))).json()
        plain = await (await client.post("/v1/audio/transcriptions", data=transcription_form(
            wav, response_format="json"))).json()
        return verbose, plain
    verbose, plain = with_client(backends, go)
    assert verbose == {"text": plain["text"], "task": "transcribe", "language": "en"}
