"""Secrets of an environment that has no Pulumi state (local, existing hosts without Pulumi).

Generated once and kept in `.stack/<env>/secrets.json` (0600) so that a re-run, or a rebuild,
keeps tokens valid. Values given in the stack config win over generated ones.
"""
from __future__ import annotations

import json
import os
import secrets as _random
from dataclasses import dataclass

from infra.config import StackConfig
from infra.outputs import STACK_DIR


@dataclass(frozen=True)
class EnvSecrets:
    api_secret: str
    turn_secret: str
    token_key: str

    def __repr__(self) -> str:
        return "EnvSecrets(<hidden>)"


def load_or_create(cfg: StackConfig) -> EnvSecrets:
    path = STACK_DIR / cfg.env / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    values = {
        "api_secret": cfg.api_secret.plain or stored.get("api_secret") or _random.token_hex(32),
        "turn_secret": cfg.turn_secret.plain or stored.get("turn_secret") or _random.token_hex(32),
        "token_key": cfg.token_key.plain or stored.get("token_key") or _random.token_urlsafe(32),
    }
    if values != stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh, indent=2)
        os.replace(path.with_suffix(".tmp"), path)
    return EnvSecrets(**values)
