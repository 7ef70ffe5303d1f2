"""A stand-in Home Assistant REST API for the n8n tests: records POST /api/services/<domain>/<service>
and answers as Home Assistant does (the states that changed; 401 without the right bearer token).

In-process (tests/unit/test_agent_n8n.py, an n8n on loopback):

    ha = HomeAssistant(token); ha.port; ha.calls; ha.close()

Or as a process inside a network namespace next to an n8n that runs there (tests/e2e/test_recording.py):

    ip netns exec <ns> python -m tests.home_assistant      # stdin: {"token": ...} (never argv)

which prints {"listening": <port>} and then one JSON line per call.
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class HomeAssistant:
    def __init__(self, token: str, on_call: Callable[[dict[str, Any]], None] = lambda _c: None) -> None:
        self.calls: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                call = {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                outer.calls.append(call)
                on_call(call)
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self._send(401, {"message": "Invalid authentication"})
                    return
                # HA answers with the states that changed.
                self._send(200, [{"entity_id": body.get("entity_id"), "state": "on", "attributes": {}}])

            def _send(self, status: int, obj: Any) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> int:
    token = json.loads(sys.stdin.readline())["token"]
    lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    ha = HomeAssistant(token, on_call=lambda call: emit({"call": call}))
    emit({"listening": ha.port})
    threading.Event().wait()  # until the caller terminates this process
    return 0


if __name__ == "__main__":
    sys.exit(main())
