"""Ogg/Opus files with PyAV (libopus): a crash-tolerant writer, a streaming reader, a mixdown.

Nothing here holds a whole recording in memory: the writer encodes 10-20 ms frames as they
arrive, the reader yields fixed-size blocks, and the mixdown walks all tracks block by block.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

log = logging.getLogger("agent.audio_files")

# Ogg pages are self-delimiting: a file cut off anywhere decodes up to its last whole page.
# Shorter pages bound what a crash loses (default 1 s) for ~1 kbit/s of page headers.
PAGE_DURATION_US = 500_000
IO_BUFFER = 4096


class OggOpusWriter:
    """Mono Ogg/Opus, written as it goes so that a killed process leaves a playable file.

    Small unbuffered writes put each finished Ogg page in the kernel at once (a SIGKILL loses
    at most the page being filled, about PAGE_DURATION_US); sync() adds an fsync against
    power loss. `samples` counts what was written, the basis of every duration.
    """

    def __init__(self, path: Path, sample_rate: int = 48000, bitrate: int = 24000,
                 channels: int = 1) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.channels = channels
        self.samples = 0
        # O_EXCL: never overwrite a recording; 0640: recordings are personal data.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._file = open(fd, "wb", buffering=0)
        try:
            self._container = av.open(self._file, mode="w", format="ogg", buffer_size=IO_BUFFER,
                                      container_options={"page_duration": str(PAGE_DURATION_US)})
            self._stream = self._container.add_stream(
                "libopus", rate=sample_rate, layout="mono" if channels == 1 else "stereo")
            self._stream.bit_rate = bitrate
        except Exception:
            self._file.close()
            raise
        self._closed = False

    def write(self, pcm: np.ndarray) -> None:
        """Append int16 samples (shape (n,) mono, or (n, channels) interleaved)."""
        if self._closed or pcm.size == 0:
            return
        planar = pcm.reshape(-1, self.channels).T.astype(np.int16, copy=False)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="s16p",
                                           layout="mono" if self.channels == 1 else "stereo")
        frame.sample_rate = self.sample_rate
        frame.pts = self.samples
        self.samples += planar.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def write_silence(self, samples: int) -> None:
        step = self.sample_rate // 10
        while samples > 0:
            n = min(step, samples)
            self.write(np.zeros((n, self.channels) if self.channels > 1 else n, dtype=np.int16))
            samples -= n

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate

    def sync(self) -> None:
        if not self._closed:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush the encoder, write the end-of-stream page and fsync; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()


def iter_pcm(path: Path, sample_rate: int = 16000, channel: int | None = None,
             block_s: float = 0.1) -> Iterator[np.ndarray]:
    """Mono int16 blocks of `block_s` seconds (the last one shorter), decoded as they are read.

    channel: None mixes all channels down, 0/1 picks one (agent calls: user, agent).
    A file cut off by a crash ends where its last whole page ends; that is logged, not raised.
    """
    block = max(1, int(sample_rate * block_s))
    parts: list[np.ndarray] = []  # decoded frames not yet handed out, joined once per block
    held = 0
    layout = "mono" if channel is None else "stereo"
    resampler = av.AudioResampler(format="s16", layout=layout, rate=sample_rate)

    def blocks(final: bool = False) -> Iterator[np.ndarray]:
        nonlocal parts, held
        if held < block and not (final and held):
            return
        joined = np.concatenate(parts)
        whole = joined.size - joined.size % block if not final else joined.size
        for i in range(0, whole, block):
            yield joined[i:i + block]
        rest = joined[whole:]
        parts, held = ([rest] if rest.size else []), rest.size

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        if channel is not None and stream.codec_context.channels < 2:
            raise ValueError(f"{path.name} has one channel; cannot take channel {channel}")
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pcm = _pick(out, channel)
                    parts.append(pcm)
                    held += pcm.size
                yield from blocks()
        except (av.error.InvalidDataError, av.error.EOFError) as exc:
            log.warning("%s ends early (a recording cut off by a crash?): %s", path.name, exc)
        for out in resampler.resample(None):
            pcm = _pick(out, channel)
            parts.append(pcm)
            held += pcm.size
    yield from blocks(final=True)


def _pick(frame: av.AudioFrame, channel: int | None) -> np.ndarray:
    data = frame.to_ndarray().reshape(-1)  # packed s16: interleaved
    if channel is None:
        return data.astype(np.int16, copy=False)
    return data.reshape(-1, 2)[:, channel].astype(np.int16, copy=True)


def duration_s(path: Path, channel: int | None = None) -> float:
    """Seconds of audio in a file, by decoding it (exact also for files cut off by a crash)."""
    rate = 16000
    return sum(b.size for b in iter_pcm(path, rate, channel, block_s=1.0)) / rate


def _aligned(blocks: Iterator[np.ndarray], lead: int, block: int) -> Iterator[np.ndarray]:
    """`blocks` placed `lead` samples late on a timeline cut into blocks of `block` samples."""
    while lead >= block:
        yield np.zeros(block, dtype=np.int16)
        lead -= block
    buf = np.zeros(lead, dtype=np.int16)
    for chunk in blocks:
        buf = np.concatenate([buf, chunk])
        while buf.size >= block:
            yield buf[:block]
            buf = buf[block:]
    if buf.size:
        yield np.pad(buf, (0, block - buf.size))


def mixdown(sources: Sequence[tuple[Path, float, int | None]], out_path: Path,
            sample_rate: int = 48000, bitrate: int = 32000) -> float:
    """Mix (file, offset seconds, channel) sources onto one timeline as a mono Ogg/Opus file.

    Walks every source one second at a time, so memory stays O(sources x 1 s).
    Returns the mix's duration in seconds. Written to a temporary name, then renamed.
    """
    block = sample_rate
    lanes = [_aligned(iter_pcm(path, sample_rate, channel, 1.0), int(round(max(0.0, offset) * sample_rate)),
                      block) for path, offset, channel in sources]
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    writer = OggOpusWriter(tmp, sample_rate, bitrate)
    try:
        while lanes:
            mix = np.zeros(block, dtype=np.int32)
            alive = []
            for lane in lanes:
                chunk = next(lane, None)
                if chunk is not None:
                    mix += chunk
                    alive.append(lane)
            lanes = alive
            if alive:
                writer.write(np.clip(mix, -32768, 32767).astype(np.int16))
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return writer.duration_s
