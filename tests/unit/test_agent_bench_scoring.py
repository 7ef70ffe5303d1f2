"""The voice benchmark's scoring: word error rate and percentiles it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_voice  # noqa: E402


@pytest.mark.parametrize(("ref", "hyp", "edits"), [
    ("set the thermostat to twenty one degrees", "Set the thermostat to 21°.", 0),
    ("set the thermostat to nineteen and a half degrees", "Set the thermostat to 19.5 degrees.", 0),
    ("what's the time", "What is the time?", 0),
    ("turn on the lights", "Turn off the lights.", 1),
    ("lights off", "White off.", 1),
    ("hello", "", 1),
    ("", "thanks", 1),
], ids=["number-words", "half", "contraction", "substitution", "short", "deletion", "insertion"])
def test_agent_bench_word_edits_ignore_spelling_of_numbers_and_punctuation(
        ref: str, hyp: str, edits: int) -> None:
    assert bench_voice.edit_distance(bench_voice.words(ref), bench_voice.words(hyp)) == edits


def test_agent_bench_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (bench_voice.pct(values, 0.5), bench_voice.pct(values, 0.95)) == (50.0, 95.0)
    assert bench_voice.pct([3.0], 0.95) == 3.0


def test_accuracy_scores_words_and_intents_of_what_was_heard() -> None:
    acc = bench_voice.accuracy([("turn on the lights", "lights state=on", "Turn on the lights."),
                                ("lights off", "lights state=off", "Wipe off.")])
    assert (acc.n, acc.wer, acc.intent_accuracy) == (2, 1 / 6, 0.5)
    assert acc.misses == [("lights off", "Wipe off.", "other")]
