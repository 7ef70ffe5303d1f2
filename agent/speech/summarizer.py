"""A deterministic extractive meeting summary: the offline stand-in for an LLM's summary.

It reads a transcript of "Speaker: text" lines (optionally "[mm:ss] " in front), scores each
sentence by how often its content words occur in the whole meeting, and returns the
participants and the best sentences in their original order. Same input, same summary, so
tests and the offline environment can check it word for word.
"""
from __future__ import annotations

import math
import re

MAX_POINTS = 5
_LINE = re.compile(r"^\s*(?:\[[0-9:.]+\]\s*)?(?P<speaker>[^:\n]{1,80}?):\s*(?P<text>.+?)\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z][a-z']+")
_STOP = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just let me more
most my myself no nor not now of off on once only or other our ours ourselves out over own same
she should so some such than that the their theirs them themselves then there these they this
those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves okay ok yes yeah um uh oh well also get got
going go like really think know one two
""".split())


def _lines(transcript: str) -> list[tuple[str, str]]:
    out = []
    for raw in transcript.splitlines():
        m = _LINE.match(raw)
        if m:
            out.append((m.group("speaker").strip(), m.group("text").strip()))
        elif raw.strip() and out:
            speaker, text = out[-1]
            out[-1] = (speaker, f"{text} {raw.strip()}")
    return out


def summarize(transcript: str | None) -> str:
    """The summary text of a transcript ("" in, a one-line notice out)."""
    lines = _lines(transcript or "")
    if not lines:
        return "Nothing was said in this recording."
    speakers: list[str] = []
    sentences: list[tuple[str, str]] = []
    for speaker, text in lines:
        if speaker not in speakers:
            speakers.append(speaker)
        sentences.extend((speaker, s.strip()) for s in _SENTENCE.split(text) if s.strip())
    freq: dict[str, int] = {}
    for _, s in sentences:
        for w in _WORD.findall(s.lower()):
            if w not in _STOP:
                freq[w] = freq.get(w, 0) + 1

    def score(item: tuple[int, tuple[str, str]]) -> tuple[float, int]:
        i, (_, s) = item
        words = [w for w in _WORD.findall(s.lower()) if w not in _STOP]
        value = sum(freq[w] for w in words) / math.sqrt(len(words)) if words else 0.0
        return (-value, i)  # best first; earlier sentence wins a tie

    keep = min(MAX_POINTS, len(sentences))
    chosen = sorted(i for i, _ in sorted(enumerate(sentences), key=score)[:keep])
    points = "\n".join(f"- {sentences[i][0]}: {sentences[i][1]}" for i in chosen)
    return f"Participants: {', '.join(speakers)}.\nKey points:\n{points}"
