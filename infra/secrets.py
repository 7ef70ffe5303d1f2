"""Secrets of an environment that has no Pulumi state (local machines), and derived secrets.

Generated once and kept in `.stack/<env>/secrets.json` (0600) so that a re-run, or a rebuild,
keeps tokens valid. Values given in the stack config win over generated ones.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets as _random
from dataclasses import dataclass

from infra.config import StackConfig
from infra.files import write_private
from infra.outputs import EnvPaths


@dataclass(frozen=True)
class EnvSecrets:
    api_secret: str
    turn_secret: str
    token_key: str
    call_password: str    # basic auth of the private voice page

    def __repr__(self) -> str:
        return "EnvSecrets(<hidden>)"


def load_or_create(cfg: StackConfig) -> EnvSecrets:
    path = EnvPaths(cfg.env).secrets
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    values = {
        "api_secret": cfg.api_secret.plain or stored.get("api_secret") or _random.token_hex(32),
        "turn_secret": cfg.turn_secret.plain or stored.get("turn_secret") or _random.token_hex(32),
        "token_key": cfg.token_key.plain or stored.get("token_key") or _random.token_urlsafe(32),
        # Typed by people from the summary: letters and digits only, 24 of them (~143 bits).
        "call_password": cfg.call_password.plain or stored.get("call_password") or _readable(24),
    }
    if values != stored:
        write_private(path, json.dumps(values, indent=2) + "\n")
    return EnvSecrets(**values)


def _readable(length: int) -> str:
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"   # no 0/O, 1/l/I
    return "".join(_random.choice(alphabet) for _ in range(length))


def derived(api_secret: str, purpose: str) -> str:
    """A secret derived from the API secret (HMAC), so no extra secret must be stored or shared.

    It rotates with the API secret; `purpose` keeps derived secrets apart, e.g. "redis/requirepass".
    """
    return hmac.new(api_secret.encode(), f"voicestack/{purpose}".encode(), hashlib.sha256).hexdigest()


def forward_secret(api_secret: str) -> str:
    """FORWARD_SECRET: the key of the signatures on forwarded events (X-Voicestack-Signature), which
    the receiver (n8n) checks; 64 hex characters. `Outputs.forward_secret` gives it to the operator."""
    return derived(api_secret, "webhooks/forward-secret")


def redis_password(api_secret: str) -> str:
    """Redis' requirepass (every node's LiveKit and Redis derive the same one)."""
    return derived(api_secret, "redis/requirepass")


def redis_sentinel_password(api_secret: str) -> str:
    """The Sentinels' own requirepass (LiveKit's sentinel_password; Sentinels authenticate to each other with it)."""
    return derived(api_secret, "redis/sentinel-requirepass")


def redis_config_command(api_secret: str) -> str:
    """The secret name CONFIG is renamed to: Sentinel needs CONFIG to fail over (it sends CONFIG REWRITE),
    so it cannot be disabled, but only Redis and the Sentinels know the name."""
    return "config-" + derived(api_secret, "redis/config-command")[:32]
