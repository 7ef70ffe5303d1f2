"""Read the stack's `voicestack:*` keys from pulumi.Config into the raw mapping `infra.config.parse` takes.

Pulumi hands every config value to the program as a string; structured values (lists, booleans,
integers) arrive as JSON text. They are decoded here and *not* checked: `parse` checks them all
at once, so a stack gets the same messages from `pulumi up` as from `make validate`.

Secrets (apiSecret, turnSecret, tokenKey) come back twice: the plain value goes into the raw
mapping only so that `parse` can check its length before any resource is declared (it is kept in
a `SecretValue`, whose repr hides it), and `get_secret` gives the secret Output the program uses.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import pulumi

from infra.config import DEFAULTS, PROJECT, SECRET_KEYS


@dataclass(frozen=True)
class PulumiConfig:
    raw: dict[str, Any]
    #: config key -> secret Output, for the secrets the stack sets (absent keys are generated)
    secrets: Mapping[str, pulumi.Output[str]]

    def __repr__(self) -> str:  # the raw mapping holds plain secrets
        return f"PulumiConfig(keys={sorted(self.raw)}, secrets={sorted(self.secrets)})"


def _decode(key: str, text: str) -> Any:
    if isinstance(DEFAULTS[key], str) or DEFAULTS[key] is None:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # parse() names the key and the expected type


def read(config: pulumi.Config | None = None) -> PulumiConfig:
    """Every project key that the stack sets (unset keys take parse()'s defaults)."""
    cfg = config or pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    secrets: dict[str, pulumi.Output[str]] = {}
    for key in DEFAULTS:
        text = cfg.get(key)
        if text is None or (key in SECRET_KEYS and text == ""):
            continue
        raw[key] = _decode(key, text)
        if key in SECRET_KEYS:
            secrets[key] = cfg.get_secret(key)
    # Keys the project does not know (typos) go to parse() too, which names them.
    set_keys = {*pulumi.runtime.config.CONFIG.get(), *pulumi.runtime.config.get_config_env()}
    for full in sorted(set_keys):
        ns, _, key = full.partition(":")
        if ns == PROJECT and key not in DEFAULTS:
            raw[key] = cfg.get(key)
    return PulumiConfig(raw=raw, secrets=secrets)
