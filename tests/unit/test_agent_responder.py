"""The deterministic responder: what the local voice agent answers."""

from datetime import datetime
from pathlib import Path

import pytest

from agent.speech.responder import (
    FALLBACK,
    GREETING,
    HELP,
    Intent,
    heard_greeting,
    intent,
    last_user_text,
    parse_number,
    respond,
)

REPO = Path(__file__).resolve().parents[2]

FIXED_NOW = datetime(2026, 1, 2, 14, 5)


@pytest.mark.parametrize(
    ("said", "answer"),
    [
        ("turn on the lights", "Okay, I turned on the lights."),
        ("Turn on the lights.", "Okay, I turned on the lights."),
        ("please switch off the light", "Okay, I turned off the lights."),
        ("turn the lights off", "Okay, I turned off the lights."),
        ("lights on in the kitchen", "Okay, I turned on the lights in the kitchen."),
        ("the lights", "Do you want the lights on or off?"),
        ("set the thermostat to 21 degrees", "Okay, I set the thermostat to 21 degrees."),
        ("Set the thermostat to twenty-one degrees.", "Okay, I set the thermostat to 21 degrees."),
        ("set the temperature to 19.5", "Okay, I set the thermostat to 19.5 degrees."),
        ("change the thermostat", "To what temperature should I set the thermostat?"),
        ("What time is it?", "It is 2:05 PM."),
        ("Hello there", "Hello! How can I help you?"),
        ("Good morning", "Hello! How can I help you?"),
        ("order a pizza", FALLBACK),
        ("", GREETING),
    ],
    ids=[
        "lights-on", "lights-on-punctuated", "lights-off-switch", "lights-off-trailing",
        "lights-room", "lights-ambiguous", "thermostat-digits", "thermostat-words",
        "thermostat-decimal", "thermostat-no-number", "time", "greeting-hello",
        "greeting-morning", "fallback", "nothing-said-greets",
    ],
)
def test_agent_responder_answers_intent(said: str, answer: str) -> None:
    assert respond(said, now=lambda: FIXED_NOW) == answer


@pytest.mark.parametrize("transcript, greeting", [
    (GREETING, True), ("Hello. I am your voids assistant. How can I help?", True), ("hello assistant help", True),
    ("Okay, I turned on the lights.", False), (HELP, False), ("I am your voice assistant.", False), ("", False)])
def test_a_transcript_of_the_greeting_is_recognised_by_its_words(transcript: str, greeting: bool) -> None:
    assert heard_greeting(transcript) is greeting


def test_agent_responder_time_uses_the_clock_at_answer_time() -> None:
    assert respond("what time is it", now=lambda: datetime(2026, 1, 2, 0, 7)) == "It is 12:07 AM."


@pytest.mark.parametrize(("text", "value"), [("21", 21.0), ("twenty one", 21.0),
                                             ("ninety nine", 99.0), ("no number", None)])
def test_agent_responder_parses_numbers(text: str, value: float | None) -> None:
    assert parse_number(text) == value


def test_agent_responder_reads_only_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "turn on the lights"},
        {"role": "assistant", "content": "Okay, I turned on the lights."},
        {"role": "user", "content": [{"type": "text", "text": "what time is it"}]},
    ]
    assert last_user_text(messages) == "what time is it"
    assert last_user_text([{"role": "system", "content": "x"}]) is None


@pytest.mark.parametrize(
    ("said", "answer"),
    [
        ("Turn the heating up.", "Okay, I turned the heating up."),
        ("It's too warm, make it cooler.", "Okay, I turned the heating down."),
        ("What day is it today?", "Today is Friday, January 2."),
        ("What is the day today?", "Today is Friday, January 2."),
        ("What can you do?", "I can switch the lights, set the thermostat and tell you the time or the date."),
        ("Thank you.", "You're welcome."),
        ("Goodbye.", "Goodbye!"),
        ("Set the thermostat to 19 and a half degrees.", "Okay, I set the thermostat to 19.5 degrees."),
        ("Set the thermostat to nineteen point five.", "Okay, I set the thermostat to 19.5 degrees."),
        ("Set the thermostat to 21°.", "Okay, I set the thermostat to 21 degrees."),
        ("Switch the bedroom lights off.", "Okay, I turned off the lights in the bedroom."),
    ],
    ids=["heating-up", "heating-down", "date", "date-the-day", "help", "thanks", "goodbye",
         "thermostat-and-a-half", "thermostat-point-five", "thermostat-degree-sign", "lights-room-before"],
)
def test_agent_responder_answers_extended_intents(said: str, answer: str) -> None:
    assert respond(said, now=lambda: FIXED_NOW) == answer


def _phrase_set() -> list[dict[str, str]]:
    import yaml

    return yaml.safe_load((REPO / "bench" / "phrases.yaml").read_text())["phrases"]


def test_agent_responder_phrase_set_is_large_and_labelled() -> None:
    phrases = _phrase_set()
    assert len(phrases) >= 40
    assert len({p["text"] for p in phrases}) == len(phrases)
    assert {Intent.parse(p["intent"]).name for p in phrases} >= {
        "lights", "thermostat_set", "time", "greeting", "other"}


@pytest.mark.parametrize("phrase", _phrase_set(), ids=lambda p: p["text"][:40])
def test_agent_responder_recognises_every_benchmark_phrase(phrase: dict[str, str]) -> None:
    assert intent(phrase["text"]) == Intent.parse(phrase["intent"])


def test_agent_responder_intent_label_round_trips() -> None:
    label = "lights state=on room=living_room"
    assert Intent.parse(label) == Intent("lights", state="on", room="living room")
    assert Intent.parse(label).label == label
    with pytest.raises(ValueError, match="colour"):
        Intent.parse("lights colour=red")
