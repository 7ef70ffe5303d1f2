"""OpenAI-compatible offline speech server: STT, TTS and a deterministic chat responder.

    python -m agent.speech_server          # env: SPEECH_HOST (127.0.0.1), SPEECH_PORT (8000)

It is the local default for the agent worker's three backends (STT_BASE_URL, LLM_BASE_URL,
TTS_BASE_URL all point at http://127.0.0.1:8000/v1); each can be swapped for any other
OpenAI-compatible service independently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any, Callable

from aiohttp import web

from agent.speech.responder import last_user_text, respond
from agent.speech.summarizer import summarize
from agent.speech.tts import OUTPUT_SAMPLE_RATE

log = logging.getLogger("agent.speech_server")

# Loaded lazily by main(); tests inject their own (already loaded) instances.
STT_KEY = web.AppKey("stt", object)
TTS_KEY = web.AppKey("tts", object)
RESPONDER_KEY = web.AppKey("responder", object)

_TTS_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}
# The chat "model" that answers with a deterministic extractive summary of the user message
# (a transcript) instead of the voice responder; agent.recording_config.EXTRACTIVE_MODEL.
SUMMARY_MODEL = "extractive-summary"


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    # OpenAI's error envelope, so openai-python raises a readable APIStatusError.
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def transcriptions(request: web.Request) -> web.StreamResponse:
    fields: dict[str, str] = {}
    granularities: list[str] = []
    audio: bytes | None = None
    try:
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                audio = await part.read()
            elif part.name == "timestamp_granularities[]":
                granularities.append(await part.text())
            elif part.name:
                fields[part.name] = await part.text()
    except (ValueError, AssertionError) as exc:
        return _error(400, f"expected multipart/form-data with a 'file' part: {exc}")
    if not audio:
        return _error(400, "missing 'file': send the audio as multipart field 'file'")
    response_format = fields.get("response_format", "json")
    if response_format not in ("json", "text", "verbose_json"):
        return _error(400, f"response_format {response_format!r} is not supported; "
                      "use json, text or verbose_json")

    stt = request.app[STT_KEY]
    language = fields.get("language") or None
    # Timed segments only when asked for (timestamp_granularities[]=segment, as recordings do):
    # the live agent's plugin sends verbose_json for whisper-1 too, and its path (command
    # vocabulary prompt, no timestamps: the fastest decode) must stay exactly as it is.
    segmented = response_format == "verbose_json" and "segment" in granularities
    try:
        if segmented:
            prompt = fields["prompt"] if "prompt" in fields else stt.config.initial_prompt
            segments, duration = await asyncio.to_thread(stt.transcribe_segments, audio, language,
                                                         prompt or None)
        else:
            text = await asyncio.to_thread(stt.transcribe, audio, language)
    except Exception as exc:  # noqa: BLE001 - undecodable audio surfaces from PyAV as many exception types
        log.warning("failed to transcribe %d bytes: %s", len(audio), exc)
        return _error(400, f"failed to decode or transcribe the audio: {exc}")
    if response_format == "text":
        return web.Response(text=text, content_type="text/plain")
    if segmented:
        return web.json_response({
            "task": "transcribe", "language": language or "en", "duration": round(duration, 2),
            "text": " ".join(s["text"] for s in segments), "segments": segments,
        })
    body: dict[str, Any] = {"text": text}
    if response_format == "verbose_json":
        body.update(task="transcribe", language=language or "en")
    return web.json_response(body)


async def speech(request: web.Request) -> web.StreamResponse:
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "expected a JSON body with 'input'")
    text = str(payload.get("input") or "").strip()
    if not text:
        return _error(400, "missing 'input': the text to speak")
    # The openai TTS plugin's default is mp3; only uncompressed formats are offered here.
    response_format = payload.get("response_format") or "wav"
    if response_format not in _TTS_FORMATS:
        return _error(
            400, f"response_format {response_format!r} is not supported; use wav or pcm "
            f"({OUTPUT_SAMPLE_RATE} Hz mono s16le)",
        )
    speed = float(payload.get("speed") or 1.0)
    # `voice`, `model` and OpenAI's `stream_format` are accepted and ignored: one voice here.
    tts = request.app[TTS_KEY]
    synth = tts.wav if response_format == "wav" else tts.pcm
    audio = await asyncio.to_thread(synth, text, speed)
    return web.Response(body=audio, content_type=_TTS_FORMATS[response_format])


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any],
           finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _usage(prompt: str, answer: str) -> dict[str, int]:
    # Word counts stand in for tokens: clients only display or sum them.
    p, c = len(prompt.split()), len(answer.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "expected a JSON body with 'messages'")
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return _error(400, "missing 'messages': a list of chat messages")
    model = str(payload.get("model") or "voice-responder")
    prompt = last_user_text(messages)
    if model == SUMMARY_MODEL:
        answer = await asyncio.to_thread(summarize, prompt)
    else:
        answer = request.app[RESPONDER_KEY](prompt)
    cid, created = _completion_id(), int(time.time())

    if not payload.get("stream"):
        return web.json_response({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": _usage(prompt or "", answer),
        })

    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
    })
    await response.prepare(request)

    async def send(obj: dict[str, Any] | str) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        await response.write(f"data: {data}\n\n".encode())

    await send(_chunk(cid, created, model, {"role": "assistant", "content": ""}))
    # Word by word, like a real model, so clients' sentence streaming is exercised.
    words = answer.split(" ")
    for i, word in enumerate(words):
        await send(_chunk(cid, created, model, {"content": word if i == 0 else " " + word}))
    await send(_chunk(cid, created, model, {}, finish="stop"))
    if (payload.get("stream_options") or {}).get("include_usage"):
        await send({"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": _usage(prompt or "", answer)})
    await send("[DONE]")
    await response.write_eof()
    return response


def create_app(stt: Any, tts: Any,
               responder: Callable[[str | None], str] = respond) -> web.Application:
    """The HTTP app around already-loaded backends (anything with .transcribe / .wav / .pcm)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)  # a few minutes of wav
    app[STT_KEY], app[TTS_KEY], app[RESPONDER_KEY] = stt, tts, responder
    app.router.add_get("/health", health)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def load_backends() -> tuple[Any, Any]:
    """Load both models once, at startup (about 2 s), so the first request is not slow."""
    from agent.speech.stt import SttConfig, Transcriber
    from agent.speech.tts import Synthesizer, TtsConfig

    return Transcriber(SttConfig.from_env()), Synthesizer(TtsConfig.from_env())


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = os.environ.get("SPEECH_HOST", "127.0.0.1")
    port = int(os.environ.get("SPEECH_PORT", "8000"))
    stt, tts = load_backends()
    log.info("models loaded; listening on http://%s:%d", host, port)
    web.run_app(create_app(stt, tts), host=host, port=port, print=None,
                access_log_format='%a "%r" %s %b %Tfs')


if __name__ == "__main__":
    main()
