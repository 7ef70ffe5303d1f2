"""A shell (or one command) on a local environment's emulated internet.

    python -m infra.local shell --env local               # make shell ENV=local
    python -m infra.local shell --env local -- curl https://livekit.local.test/

The environment's public names resolve only there (its DNS serves the client namespace), and
its certificates chain to the environment's own ACME root: the shell trusts that root
(CURL_CA_BUNDLE, SSL_CERT_FILE, REQUESTS_CA_BUNDLE) and knows the environment's URLs and token
key, so the README's commands work as written.
"""
from __future__ import annotations

import os
import sys

from infra.outputs import Outputs


def in_client_namespace(out: Outputs) -> bool:
    """True when this process already runs in the environment's client namespace."""
    if not out.client_netns:
        return True
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat(f"/run/netns/{out.client_netns}").st_ino
    except OSError:
        return False


def environment(out: Outputs) -> dict[str, str]:
    env = dict(os.environ, VOICESTACK_ENV=out.env, LIVEKIT_URL=out.livekit_url, TOKEN_ENDPOINT=out.token_endpoint,
               TOKEN_KEY=out.token_key, PS1=f"[{out.env} internet] \\w \\$ ")
    if out.ca_bundle:
        env.update(CURL_CA_BUNDLE=out.ca_bundle, SSL_CERT_FILE=out.ca_bundle, REQUESTS_CA_BUNDLE=out.ca_bundle)
    return env


def exec_in_client_namespace(out: Outputs, argv: list[str]) -> None:
    """Replace this process with `argv` inside the client namespace (the caller must be root)."""
    if not out.client_netns:
        raise SystemExit(f"environment {out.env} is not a local one: its names resolve anywhere, run the command as is")
    if os.geteuid() != 0:
        raise SystemExit("entering the local environment's network namespace needs root; run it with sudo")
    command = argv or [os.environ.get("SHELL", "/bin/bash")]
    os.execvpe("ip", ["ip", "netns", "exec", out.client_netns, *command], environment(out))


def rerun_in_client_namespace(out: Outputs, module: str, args: list[str]) -> None:
    """For operator CLIs (admin): re-run `python -m module args` on the emulated internet when needed."""
    if in_client_namespace(out):
        return
    exec_in_client_namespace(out, [sys.executable, "-m", module, *args])
