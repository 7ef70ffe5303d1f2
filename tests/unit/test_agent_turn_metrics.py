"""Per-turn latency breakdown: livekit-agents' ChatMessage metrics -> log line and Prometheus."""

from __future__ import annotations

import logging

import pytest
from livekit.agents import llm
from livekit.agents.voice.events import ConversationItemAddedEvent
from prometheus_client import REGISTRY

from agent import turn_metrics


def _item(role: str, metrics: dict[str, float], interrupted: bool = False) -> ConversationItemAddedEvent:
    message = llm.ChatMessage(role=role, content=["text"], interrupted=interrupted,
                              metrics=metrics)  # type: ignore[arg-type]
    return ConversationItemAddedEvent(item=message)


def _count(stage: str) -> float:
    return REGISTRY.get_sample_value("voicestack_agent_turn_stage_seconds_count", {"stage": stage}) or 0.0


USER = {"end_of_turn_delay": 0.45, "transcription_delay": 0.41, "stopped_speaking_at": 100.0}
AGENT = {"llm_node_ttft": 0.02, "tts_node_ttfb": 0.09, "e2e_latency": 0.58, "playback_latency": 0.001}


def test_agent_turn_metrics_pairs_the_answer_with_the_user_turn(caplog: pytest.LogCaptureFixture) -> None:
    recorder = turn_metrics.TurnRecorder()
    before = _count("e2e")
    with caplog.at_level(logging.INFO, logger="agent.turn_metrics"):
        recorder.on_item(_item("assistant", {"tts_node_ttfb": 0.1}))  # the greeting: no user turn
        recorder.on_item(_item("user", USER))
        recorder.on_item(_item("assistant", AGENT))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["turn metrics: end_of_turn=0.450s transcription=0.410s llm_ttft=0.020s "
                     "tts_ttfb=0.090s e2e=0.580s playback=0.001s interrupted=no"]
    assert _count("e2e") == before + 1
    assert REGISTRY.get_sample_value("voicestack_agent_turns_total", {"interrupted": "false"}) >= 1


def test_agent_turn_metrics_marks_an_interrupted_answer() -> None:
    turn = turn_metrics.breakdown(USER, {"llm_node_ttft": 0.02}, interrupted=True)
    assert turn.interrupted and turn.e2e is None and turn.stages() == {
        "end_of_turn": 0.45, "transcription": 0.41, "llm_ttft": 0.02}
    assert turn.log_line().endswith("interrupted=yes")


def test_agent_turn_metrics_multiprocess_dir_is_created_once(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path) -> None:
    monkeypatch.delenv(turn_metrics.MULTIPROC_ENV, raising=False)
    first = turn_metrics.ensure_multiprocess_dir()
    try:
        assert turn_metrics.ensure_multiprocess_dir() == first
    finally:
        import shutil

        shutil.rmtree(first, ignore_errors=True)
    monkeypatch.setenv(turn_metrics.MULTIPROC_ENV, str(tmp_path / "given"))
    assert turn_metrics.ensure_multiprocess_dir() == str(tmp_path / "given")
    assert (tmp_path / "given").is_dir()
