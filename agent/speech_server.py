"""OpenAI-compatible offline speech server: STT, TTS and a deterministic chat responder.

    python -m agent.speech_server          # env: SPEECH_HOST (127.0.0.1), SPEECH_PORT (8000)

It is the local default for the agent worker's three backends (STT_BASE_URL, LLM_BASE_URL,
TTS_BASE_URL all point at http://127.0.0.1:8000/v1); each can be swapped for any other
OpenAI-compatible service independently.

Voice actions: with ACTION_URL (and ACTION_SECRET) set, a device intent ("turn on the lights in
the kitchen") is sent to that URL (an n8n webhook, agent/actions.py) and the chat answer is the
sentence the workflow returns, or a fallback when it fails or is slow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any, Callable

from aiohttp import ClientSession, web

from agent.actions import ActionClient, ActionConfig, from_intent
from agent.speech.responder import intent, last_user_text, respond
from agent.speech.summarizer import summarize
from agent.speech.tts import OUTPUT_SAMPLE_RATE

log = logging.getLogger("agent.speech_server")

# Loaded lazily by main(); tests inject their own (already loaded) instances.
STT_KEY = web.AppKey("stt", object)
TTS_KEY = web.AppKey("tts", object)
RESPONDER_KEY = web.AppKey("responder", object)
ACTIONS_KEY = web.AppKey("actions", ActionClient)
HTTP_KEY = web.AppKey("http", ClientSession)

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
            result = await asyncio.to_thread(stt.transcribe_detailed, audio, language)
    except Exception as exc:  # noqa: BLE001 - undecodable audio surfaces from PyAV as many exception types
        log.warning("failed to transcribe %d bytes: %s", len(audio), exc)
        return _error(400, f"failed to decode or transcribe the audio: {exc}")
    if segmented:
        return web.json_response({
            "task": "transcribe", "language": language or "en", "duration": round(duration, 2),
            "text": " ".join(s["text"] for s in segments), "segments": segments,
        })
    text = result.text
    # What was said stays out of the INFO log (it is the user's speech); DEBUG shows it.
    log.info("stt %.2f s of audio in %.3f s (window %g s%s%s)", result.audio_s, result.seconds,
             result.window_s, f", fallback: {result.fallback}" if result.fallback else "",
             ", repeated text kept once" if result.kept_once else "")
    log.debug("stt heard %r", text)
    if response_format == "text":
        return web.Response(text=text, content_type="text/plain")
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
    try:
        speed = float(payload.get("speed") or 1.0)
    except (TypeError, ValueError):
        return _error(400, f"'speed' must be a number, got {payload.get('speed')!r}")
    # `voice`, `model` and OpenAI's `stream_format` are accepted and ignored: one voice here.
    tts = request.app[TTS_KEY]
    if response_format == "wav":  # the header needs the length: the whole file at once
        audio = await asyncio.to_thread(tts.wav, text, speed)
        return web.Response(body=audio, content_type=_TTS_FORMATS[response_format])
    # pcm: each chunk is written as soon as it is synthesised (the first clause first);
    # livekit's openai TTS plugin plays the body's chunks as they arrive (iter_bytes).
    started = time.perf_counter()
    chunks = tts.sentences_pcm(text, speed)
    response = web.StreamResponse(headers={"Content-Type": _TTS_FORMATS["pcm"]})
    first = await asyncio.to_thread(next, chunks, None)
    await response.prepare(request)
    first_s = time.perf_counter() - started
    while first is not None:
        await response.write(first)
        first = await asyncio.to_thread(next, chunks, None)
    await response.write_eof()
    log.info("tts %d chars: first audio after %.3f s, all after %.3f s", len(text), first_s,
             time.perf_counter() - started)
    return response


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
    action = from_intent(intent(prompt), prompt or "") if ACTIONS_KEY in request.app else None
    if model == SUMMARY_MODEL:
        answer = await asyncio.to_thread(summarize, prompt)
    elif action is not None:
        answer = await request.app[ACTIONS_KEY].perform(action, request.app[HTTP_KEY])
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


async def _http_ctx(app: web.Application) -> Any:
    async with ClientSession() as session:
        app[HTTP_KEY] = session
        yield


def create_app(stt: Any, tts: Any, responder: Callable[[str | None], str] = respond,
               actions: ActionConfig | None = None) -> web.Application:
    """The HTTP app around already-loaded backends: an stt with .transcribe_detailed (see
    agent.speech.stt.Transcriber), a tts with .wav and .sentences_pcm (Synthesizer);
    `actions` sends device intents to the action URL."""
    app = web.Application(client_max_size=64 * 1024 * 1024)  # a few minutes of wav
    app[STT_KEY], app[TTS_KEY], app[RESPONDER_KEY] = stt, tts, responder
    if actions is not None:
        app[ACTIONS_KEY] = ActionClient(actions)
        app.cleanup_ctx.append(_http_ctx)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def load_backends(warm: bool = True) -> tuple[Any, Any]:
    """Load both models once, at startup (about 2 s), and run each once so that the first
    request is as fast as the rest (`warm`)."""
    from agent.speech.stt import SttConfig, Transcriber
    from agent.speech.tts import Synthesizer, TtsConfig, wav_bytes

    stt, tts = Transcriber(SttConfig.from_env()), Synthesizer(TtsConfig.from_env())
    if warm:
        started = time.perf_counter()
        tts.warm_up()
        stt.warm_up(wav_bytes(tts.pcm("Turn on the lights.")))
        log.info("models warmed up in %.2f s", time.perf_counter() - started)
    return stt, tts


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = os.environ.get("SPEECH_HOST", "127.0.0.1")
    port = int(os.environ.get("SPEECH_PORT", "8000"))
    try:
        actions = ActionConfig.from_env()   # checked before the models load: a bad setting fails fast
    except ValueError as exc:
        raise SystemExit(f"failed to read the voice-action settings: {exc}") from exc
    if actions is not None:
        log.info("voice actions go to %s (timeout %.1f s)", actions.url, actions.timeout_s)
    stt, tts = load_backends()
    log.info("models loaded; listening on http://%s:%d", host, port)
    web.run_app(create_app(stt, tts, actions=actions), host=host, port=port, print=None,
                access_log_format='%a "%r" %s %b %Tfs')


if __name__ == "__main__":
    main()
