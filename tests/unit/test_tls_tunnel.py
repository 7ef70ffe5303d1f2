"""agent/tls_tunnel.py on loopback: TCP in, TLS out, verified against the CA it is given."""
from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from agent.tls_tunnel import TlsTunnel

NAME = "turn.unit.test"


@pytest.fixture(scope="module")
def tls_echo(tmp_path_factory: pytest.TempPathFactory):
    """A TLS server on loopback for NAME that answers what it receives in upper case."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "1", "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []  # the server names (SNI) clients asked for
    ctx.sni_callback = lambda _sock, name, _ctx: seen.append(name or "")

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(tls.recv(100).upper())
            except (OSError, ssl.SSLError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], Path(d / "cert.pem"), seen
    server.close()


def test_bytes_cross_the_tunnel_over_verified_tls_with_the_server_name(tls_echo) -> None:
    port, cafile, seen = tls_echo
    tunnel = TlsTunnel("127.0.0.1", port, NAME, str(cafile))
    with tunnel as local:
        with socket.create_connection(("127.0.0.1", local), timeout=5) as s:
            s.sendall(b"allocate")
            assert s.recv(100) == b"ALLOCATE"
    assert tunnel.connections == 1 and seen[-1] == NAME  # SNI: the SNI router picks coturn by it


def test_a_server_the_ca_does_not_vouch_for_gets_no_bytes(tls_echo, tmp_path: Path) -> None:
    port, _cafile, _seen = tls_echo
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(other), "-days", "1", "-subj", "/CN=someone-else"], check=True, capture_output=True)
    tunnel = TlsTunnel("127.0.0.1", port, NAME, str(other))
    with tunnel as local:
        with socket.create_connection(("127.0.0.1", local), timeout=5) as s:
            s.sendall(b"allocate")
            assert s.recv(100) == b""  # closed: nothing was forwarded
    assert tunnel.connections == 0
