"""A local TCP port whose connections are carried over TLS to a TURN server: TURN over TLS for a
client whose own TLS stack cannot be told which CA to trust.

The rtc SDK's libwebrtc verifies TURN/TLS certificates against roots compiled into it (no
SSL_CERT_FILE, no ISRG root among them; it answers a local ACME certificate with the alert
"unknown ca"). Pointed at `turn:127.0.0.1:<port>?transport=tcp`, libwebrtc speaks TURN over
TCP to this tunnel, which opens a real TLS connection (SNI = the TURN name, verified against
`cafile`) to the server's port 443: what leaves the client is exactly a TURN/TLS client's
traffic, through the SNI router to coturn's TLS listener.
"""
from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading


class TlsTunnel:
    """`with TlsTunnel(host, 443, server_name, cafile) as port:` -> a loopback port to dial.

    It runs its own event loop in a thread: media packets are forwarded even while the caller's
    loop is busy (the round-trip client decodes audio frames on its own)."""

    def __init__(self, host: str, port: int, server_name: str, cafile: str | None) -> None:
        self.host, self.port, self.server_name = host, port, server_name
        self.ctx = ssl.create_default_context(cafile=cafile)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-tunnel", daemon=True)
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0  # how many TURN connections went through (the caller may assert on it)

    def __enter__(self) -> int:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        return self.server.sockets[0].getsockname()[1]

    def __exit__(self, *_exc: object) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter) -> None:
        try:
            remote_r, remote_w = await asyncio.open_connection(self.host, self.port, ssl=self.ctx,
                                                               server_hostname=self.server_name)
        except (OSError, ssl.SSLError):
            local_w.close()
            return
        self.connections += 1
        await asyncio.gather(_pipe(local_r, remote_w), _pipe(remote_r, local_w), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
