"""Where an environment's machines come from: one interface, two implementations.

In the spirit of kind's provider interface: `make up` and `make down` only talk to a
Provisioner, chosen by the stack's `provider` setting (local -> machines on this host,
anything else -> the Pulumi program).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from infra import outputs
from infra.config import ConfigError, load_stack_file
from infra.spec import EnvSpec
from infra.steps import Progress

ROOT = outputs.ROOT


class Provisioner(Protocol):
    name: str

    def up(self, spec: EnvSpec, progress: Progress) -> outputs.Outputs:
        """Create what `spec` describes, or bring an existing environment in line with it, and
        write `.stack/<env>/outputs.json` (infra.outputs.assemble). Safe to repeat."""

    def down(self, env: str, progress: Progress) -> None:
        """Remove every resource of the environment. Safe to repeat; keeps caches and secrets."""

    def status(self, env: str) -> str:
        """One line on what exists of the environment right now (nothing is changed)."""


def stack_file(env: str) -> Path | None:
    """`Pulumi.<env>.yaml` in the project root, when there is one."""
    path = ROOT / f"Pulumi.{env}.yaml"
    return path if path.is_file() else None


def read_settings(env: str, config: str | Path | None = None) -> tuple[dict[str, Any], bool]:
    """(raw settings, from a file?) of an environment: `config`, else Pulumi.<env>.yaml, else the
    built-in local defaults (an empty mapping)."""
    path = Path(config) if config else stack_file(env)
    if path is None:
        return {}, False
    _stack, raw = load_stack_file(path)
    return raw, True


def kind_of(env: str, config: str | Path | None = None) -> str:
    """"local" or "pulumi" for an environment, from its settings or, failing that, its outputs."""
    try:
        raw, _ = read_settings(env, config)
    except ConfigError:
        raw = {}
    provider = str(raw.get("provider") or "")
    if not provider and outputs.path_for(env).is_file():
        try:
            provider = outputs.read(env).provider
        except outputs.OutputsError:
            provider = ""
    return "local" if provider in ("", "local") else "pulumi"


def get(kind: str) -> Provisioner:
    if kind == "local":
        from infra.local.provisioner import LocalMachines
        return LocalMachines()
    from infra.cloud.provisioner import PulumiStack
    return PulumiStack()
