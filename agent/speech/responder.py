"""A small deterministic "LLM" for voice-automation intents.

It stands in for a real language model in the local environment: the answers are
predictable, so a spoken round trip can be checked word for word.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Callable, Iterable

GREETING = "Hello, I am your voice assistant. How can I help?"
FALLBACK = (
    "Sorry, I can only switch the lights, set the thermostat and tell you the time."
)

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}

_LIGHTS = re.compile(r"\blights?\b|\blamps?\b")
_ON_OFF = re.compile(r"\b(?:turn|switch|put)\s+(?:the\s+\w+\s+)?(on|off)\b|\b(on|off)\b")
_ROOM = re.compile(
    r"\b(?:in|of)\s+the\s+(kitchen|living room|bedroom|bathroom|office|hall|hallway|garage)\b"
)
_THERMOSTAT = re.compile(r"\bthermostat\b|\btemperature\b|\bheating\b")
_TIME = re.compile(r"\bwhat(?:'s| is)?\s+the\s+time\b|\bwhat\s+time\b|\btell me the time\b")
_GREETING = re.compile(r"^\s*(?:hello|hi|hey|good (?:morning|afternoon|evening))\b")


def _normalise(text: str) -> str:
    # Whisper adds punctuation and capitals; intents are matched on bare lowercase words.
    return re.sub(r"[^a-z0-9.' -]+", " ", text.lower().replace("-", " ")).strip()


def parse_number(text: str) -> float | None:
    """First number in `text`, as digits ("21", "21.5") or words ("twenty one")."""
    digits = re.search(r"\b\d+(?:\.\d+)?\b", text)
    if digits:
        return float(digits.group())
    value: int | None = None
    for word in re.findall(r"[a-z]+", text):
        if word in _TENS:
            value = (value or 0) + _TENS[word]
        elif word in _UNITS:
            value = (value or 0) + _UNITS[word]
        elif value is not None:
            break
    return float(value) if value is not None else None


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _spoken_time(now: datetime) -> str:
    hour = now.hour % 12 or 12
    suffix = "AM" if now.hour < 12 else "PM"
    return f"It is {hour}:{now.minute:02d} {suffix}."


def respond(text: str | None, now: Callable[[], datetime] = datetime.now) -> str:
    """The answer to one user utterance (None/empty means "nothing said yet": greet)."""
    said = _normalise(text or "")
    if not said:
        return GREETING
    if _LIGHTS.search(said):
        match = _ON_OFF.search(said)
        if match:
            state = match.group(1) or match.group(2)
            room = _ROOM.search(said)
            where = f" in the {room.group(1)}" if room else ""
            return f"Okay, I turned {state} the lights{where}."
        return "Do you want the lights on or off?"
    if _THERMOSTAT.search(said):
        value = parse_number(said)
        if value is None:
            return "To what temperature should I set the thermostat?"
        return f"Okay, I set the thermostat to {_format_number(value)} degrees."
    if _TIME.search(said):
        return _spoken_time(now())
    if _GREETING.search(said):
        return "Hello! How can I help you?"
    return FALLBACK


def _content_text(content: Any) -> str:
    # OpenAI messages carry either a string or a list of typed parts.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        )
    return ""


def last_user_text(messages: Iterable[dict[str, Any]]) -> str | None:
    """Text of the last user message of an OpenAI chat request, None if there is none."""
    last = None
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            last = _content_text(message.get("content"))
    return last
