"""The recordings service: process finished recordings, serve downloads, enforce retention.

    python -m agent.recordings      # env: RecordingConfig (RECORDINGS_DIR, RECORDINGS_PORT 8092, …),
                                    # FORWARD_URL/FORWARD_SECRET/OUTBOX_DIR (agent/outbox.py), TOKEN_KEY

Every few seconds it looks at RECORDINGS_DIR: a recording whose writer stopped without
finishing is marked partial (it is still processed and reported); each finished recording
gets transcript.json, summary.json (and mix.ogg for meetings) and one recording_finished
event in the outbox, which the webhook receiver delivers to FORWARD_URL. Recordings older
than RECORDING_RETENTION_DAYS are deleted. The directory is the queue: a restart resumes.
One recording is processed at a time, at a lower CPU priority than the live services.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

from agent import recording_pipeline
from agent.outbox import ForwardConfig, OutboxError
from agent.recording_config import RecordingConfig, RecordingConfigError
from agent.recording_pipeline import Backends
from agent.recording_store import Store, StoreError
from agent.recordings_api import create_app as create_api
from agent.summary import LlmClient
from agent.transcription import SttClient

log = logging.getLogger("agent.recordings")

SCAN_S = 2.0
RETENTION_SWEEP_S = 3600.0


class Processor:
    """The background loop; `processed` counts recordings whose event was produced."""

    def __init__(self, cfg: RecordingConfig, forward: ForwardConfig | None) -> None:
        self.cfg, self.forward = cfg, forward
        self.store = Store(cfg.root)
        self.processed = 0

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            backends = Backends(
                stt=SttClient(session, self.cfg.stt_base_url, model=self.cfg.stt_model,
                              api_key=self.cfg.stt_api_key, language=self.cfg.language),
                llm=LlmClient(session, self.cfg.summary_base_url, model=self.cfg.summary_model,
                              api_key=self.cfg.summary_api_key),
                outbox=self.forward.outbox() if self.forward else None)
            last_sweep = 0.0
            while True:
                try:
                    await self.tick(backends)
                    if time.monotonic() - last_sweep >= RETENTION_SWEEP_S or not last_sweep:
                        last_sweep = time.monotonic()
                        await asyncio.to_thread(self.store.sweep_retention, self.cfg.retention_days)
                except Exception:
                    log.exception("recordings loop failed; retrying in %.0f s", SCAN_S)
                await asyncio.sleep(SCAN_S)

    async def tick(self, backends: Backends) -> None:
        for rec in list(self.store.all()):
            self.store.mark_stale(rec, self.cfg.stale_after_s)
            if not recording_pipeline.pending(rec):
                continue
            try:
                await recording_pipeline.process(rec, self.cfg, backends)
                self.processed += 1
            except Exception as exc:  # noqa: BLE001 - a step's errors, OutboxError, a bad file: retried later
                log.error("recording %s: processing failed, will retry: %s", rec.id, exc)


async def _processor_ctx(app: web.Application) -> Any:
    task = asyncio.create_task(app[PROCESSOR_KEY].run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


PROCESSOR_KEY = web.AppKey("processor", Processor)


def create_app(cfg: RecordingConfig, forward: ForwardConfig | None) -> web.Application:
    store = Store(cfg.root)
    store.ensure()
    app = create_api(store, cfg.token_key)
    app[PROCESSOR_KEY] = Processor(cfg, forward)
    app.cleanup_ctx.append(_processor_ctx)
    return app


def main() -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = RecordingConfig.from_env()
        forward = ForwardConfig.from_env()
        if len(cfg.token_key) < 16:
            raise RecordingConfigError("TOKEN_KEY is unset or shorter than 16 characters; downloads "
                                       "are authorised with it (the same key as /api/token)")
        app = create_app(cfg, forward)
    except (RecordingConfigError, OutboxError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Transcription and mixing are batch work: the live call path must win the CPU.
    os.nice(10)
    log.info("recordings in %s (policy %s, retention %g days); downloads on http://%s:%d/api/recordings/",
             cfg.root, cfg.policy, cfg.retention_days, cfg.api_host, cfg.api_port)
    web.run_app(app, host=cfg.api_host, port=cfg.api_port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
