"""Summarise a transcript with an OpenAI-compatible chat model (SUMMARY_BASE_URL, SUMMARY_MODEL).

The offline speech server answers SUMMARY_MODEL "extractive-summary" with a deterministic
extractive summary; any real LLM (Ollama, vLLM, OpenAI…) gives an abstractive one. A
transcript too long for one request is summarised in parts, then the parts' summaries are
summarised together (map-reduce), so a long meeting never exceeds a model's context.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from agent.recording_config import EXTRACTIVE_MODEL

log = logging.getLogger("agent.summary")

MAX_CHARS = 24_000  # ~6k tokens: fits the context of small local models with room to answer
SYSTEM = (
    "You summarise meeting transcripts. Each line is '[mm:ss] Speaker: text'. Write a short "
    "summary: one sentence on what the meeting was about, then the decisions, action items "
    "(with who) and open questions as bullet points. Use only what the transcript says."
)


class SummaryError(Exception):
    pass


class LlmClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, model: str,
                 api_key: str = "dummy", attempts: int = 3, timeout_s: float = 300.0) -> None:
        self.session, self.url = session, base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.attempts, self.timeout = attempts, aiohttp.ClientTimeout(total=timeout_s)

    async def complete(self, system: str, user: str) -> str:
        body = {"model": self.model, "stream": False, "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                async with self.session.post(self.url, json=body, timeout=self.timeout,
                                             headers={"Authorization": f"Bearer {self.api_key}"}) as resp:
                    if resp.status == 200:
                        data: dict[str, Any] = await resp.json()
                        return str(data["choices"][0]["message"]["content"]).strip()
                    last = f"HTTP {resp.status} {(await resp.text())[:300]}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(30, 2 ** attempt))
        raise SummaryError(f"failed to summarise with model {self.model!r} at {self.url}: {last} — check "
                           "SUMMARY_BASE_URL / SUMMARY_MODEL (the offline server's model is extractive-summary)")


def _parts(text: str, limit: int) -> list[str]:
    """Split on line boundaries into pieces of at most `limit` characters."""
    parts, current, size = [], [], 0
    for line in text.splitlines():
        if current and size + len(line) + 1 > limit:
            parts.append("\n".join(current))
            current, size = [], 0
        current.append(line[:limit])
        size += len(line) + 1
    if current:
        parts.append("\n".join(current))
    return parts


async def summarize(llm: LlmClient, transcript: str, *, max_chars: int = MAX_CHARS) -> dict[str, Any]:
    """{"text", "model", "parts"}; raises SummaryError."""
    if not transcript.strip():
        return {"text": "Nothing was said in this recording.", "model": llm.model, "parts": 0}
    # The extractive summariser reads any length; only a real model's context is limited.
    parts = [transcript] if llm.model == EXTRACTIVE_MODEL else _parts(transcript, max_chars)
    if len(parts) == 1:
        return {"text": await llm.complete(SYSTEM, transcript), "model": llm.model, "parts": 1}
    log.info("transcript of %d characters: summarising it in %d parts", len(transcript), len(parts))
    partials = [await llm.complete(SYSTEM, part) for part in parts]
    joined = "\n".join(f"[part {i + 1}] Summary: {p}" for i, p in enumerate(partials))
    final = await llm.complete(SYSTEM + " The input is the summaries of consecutive parts of one "
                               "meeting; merge them into one summary.", joined[: max_chars * 2])
    return {"text": final, "model": llm.model, "parts": len(parts)}
