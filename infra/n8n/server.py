"""A throwaway n8n on loopback: its own user folder, workflows imported and published with n8n's CLI.

    inst = install()                                   # infra/n8n/install.py (cached)
    srv = N8nServer(inst, Path(tmp))                   # nothing runs yet
    srv.import_credentials([...]); srv.import_workflows([Path("examples/n8n/voice-action.json")])
    srv.publish("vs-voice-action")                     # n8n 2.x: `publish:workflow` replaced update:workflow
    srv.start()                                        # waits on /healthz, then on the webhooks
    ...; srv.stop(); srv.start()                       # same database: a restart keeps everything

n8n's CLI writes straight to the database and a running n8n does not notice, so imports and
publishing happen while it is stopped (`start` refuses otherwise). Everything n8n keeps (sqlite
database, encryption key, binary data) lives under the user folder; nothing is shared between two
servers. The task runner's broker port is chosen free as well, so two servers can run side by side.
Executions are read from n8n's own sqlite database (the public API would need an owner and an API
key, which a fresh instance does not have).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

from infra.n8n.install import N8nInstall

START_TIMEOUT = 300.0   # 15-60 s here; several minutes when the 2-core host is loaded (load 13)
CLI_TIMEOUT = 180.0


class N8nError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class N8nServer:
    """One n8n instance bound to 127.0.0.1; `env` adds variables the workflows read ($env).

    With `netns` (a network namespace of the local cloud, e.g. its client namespace) the server
    runs inside it, bound to `host` there: a local environment's nodes reach it as they would
    an n8n on the internet, across the same cloud firewall. Its CLI runs on the host as ever
    (it only touches the user folder's database)."""

    def __init__(self, inst: N8nInstall, folder: Path, env: Mapping[str, str] | None = None,
                 port: int | None = None, host: str = "127.0.0.1", netns: str | None = None) -> None:
        if netns is not None and port is None:
            raise N8nError("an n8n in a network namespace needs an explicit port (free on the host says nothing there)")
        self.inst = inst
        self.folder = folder
        self.host = host
        self.netns = netns
        self.port = port or free_port()
        self.broker_port = free_port()
        self.extra_env = dict(env or {})
        self.encryption_key = secrets.token_hex(24)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "n8n.log"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def webhook_url(self, path: str) -> str:
        return f"{self.url}/webhook/{path.lstrip('/')}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("N8N_", "DB_", "WEBHOOK_"))}
        env.update({
            "PATH": self.inst.env_path(),
            "N8N_USER_FOLDER": str(self.folder),
            "N8N_ENCRYPTION_KEY": self.encryption_key,
            "N8N_LISTEN_ADDRESS": self.host,
            "N8N_HOST": self.host,
            "N8N_PORT": str(self.port),
            "N8N_PROTOCOL": "http",
            "N8N_WEBHOOK_URL": f"{self.url}/",
            "N8N_RUNNERS_BROKER_PORT": str(self.broker_port),
            "N8N_RUNNERS_BROKER_LISTEN_ADDRESS": "127.0.0.1",
            "DB_TYPE": "sqlite",
            # Nothing leaves this host: no telemetry, update checks, templates or banners.
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_HIRING_BANNER_ENABLED": "false",
            "EXTERNAL_FRONTEND_HOOKS_URLS": "",
            # Modules the workflows do not use: faster boots (CLI and server) on a busy host, and
            # mcp-registry would fetch a server list from n8n's API at start.
            "N8N_DISABLED_MODULES": "mcp-registry,mcp,instance-ai,agents,agent-evals,chat-hub,workflow-builder,insights",
            "N8N_RUNNERS_GRANT_TOKEN_TTL": "120",   # the JS task runner starts slowly on a loaded 2-core host
            "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "true",
            "N8N_LOG_LEVEL": "info",
            "N8N_LOG_OUTPUT": "console",
        })
        env.update(self.extra_env)
        return env

    # --- the CLI (n8n stopped) -------------------------------------------------------------
    def cli(self, *args: str) -> str:
        if self.running():
            raise N8nError(f"n8n {' '.join(args)}: stop the server first (the CLI writes to its database directly)")
        proc = subprocess.run(self.inst.argv(*args), env=self.env(), cwd=self.folder, capture_output=True,
                              text=True, timeout=CLI_TIMEOUT)
        if proc.returncode != 0:
            raise N8nError(f"`n8n {' '.join(args)}` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
        return proc.stdout

    def import_workflows(self, paths: Iterable[Path]) -> list[str]:
        """Import workflow files as they are shipped, in one CLI run (each run boots n8n: ~10 s);
        returns their ids (each file's own fixed `id`)."""
        ids = []
        with tempfile.TemporaryDirectory(prefix=".import-", dir=self.folder) as tmp:
            for i, path in enumerate(paths):
                wid = json.loads(path.read_text()).get("id")
                if not wid:
                    raise N8nError(f"{path} has no top-level 'id'; the shipped workflows carry a fixed one")
                ids.append(str(wid))
                shutil.copyfile(path, Path(tmp) / f"{i:02d}-{path.name}")
            self.cli("import:workflow", "--separate", f"--input={tmp}")
        return ids

    def import_credentials(self, credentials: Iterable[dict[str, Any]]) -> None:
        """Credentials as n8n's export shape with plain `data`; n8n encrypts them with our key.
        The file is written 0600 inside the user folder and removed right after the import."""
        fd, name = tempfile.mkstemp(prefix=".credentials-", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(list(credentials), out)
            self.cli("import:credentials", f"--input={name}")
        finally:
            os.unlink(name)

    def publish(self, workflow_id: str) -> None:
        self.cli("publish:workflow", f"--id={workflow_id}")

    # --- the server -------------------------------------------------------------------------
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, webhooks: Iterable[str] = (), timeout: float = START_TIMEOUT) -> None:
        """Start and wait until /healthz/readiness answers and each production webhook path is
        registered: n8n reports ready before it has activated the published workflows."""
        if self.running():
            return
        log = open(self.log_path, "ab")
        try:
            argv = self.inst.argv("start")
            if self.netns is not None:
                argv = ["ip", "netns", "exec", self.netns, *argv]
            self.proc = subprocess.Popen(argv, env=self.env(), cwd=self.folder,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        paths = list(webhooks)
        while not (self._healthy() and all(self._registered(p) for p in paths)):
            if self.proc.poll() is not None:
                raise N8nError(f"n8n exited with {self.proc.returncode} while starting; "
                               f"its log ({self.log_path}) ends: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise N8nError(f"n8n did not answer {self.url}/healthz/readiness with the webhooks "
                               f"{', '.join(paths) or '(none)'} registered within {timeout:.0f} s; "
                               f"its log ends: {self.log_tail()}")
            time.sleep(0.25)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz/readiness", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def _registered(self, path: str) -> bool:
        # A CORS preflight asks n8n for the path's methods without running the workflow:
        # 204 once the webhook is registered, 404 before.
        req = urllib.request.Request(self.webhook_url(path), method="OPTIONS", headers={
            "Origin": self.url, "Access-Control-Request-Method": "POST"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status in (200, 204)
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # n8n and its task runner child
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # --- what n8n did -------------------------------------------------------------------------
    def executions(self, workflow_id: str) -> list[dict[str, Any]]:
        """This workflow's finished executions, oldest first: id, status and the run data text
        (n8n's own flattened format; search it for values rather than parse it)."""
        db = self.folder / ".n8n" / "database.sqlite"
        if not db.is_file():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(
                "SELECT e.id, e.status, d.data FROM execution_entity e "
                "LEFT JOIN execution_data d ON d.executionId = e.id "
                "WHERE e.workflowId = ? AND e.status IN ('success', 'error', 'crashed') ORDER BY e.id",
                (workflow_id,)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            con.close()
        return [{"id": r[0], "status": r[1], "data": r[2] or ""} for r in rows]
