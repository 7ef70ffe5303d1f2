"""Validation in one entry point, and `make validate CONFIG=Pulumi.<stack>.yaml`.

`load` is the only way from raw settings to an environment spec: it collects the settings'
problems (infra.config), the port plan's (infra.spec) and the artifact manifest's
(deploy.artifacts), and raises one ConfigError listing all of them. Nothing is created.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping

from deploy.artifacts import check_pinned
from infra.config import ConfigError, check, load_stack_file, plain_secret_problems
from infra.local.names import EnvNameError
from infra.local.stack import local_raw
from infra.spec import EnvSpec, derive, port_problems


def load(raw: Mapping[str, Any], env: str, *, from_file: bool = False) -> EnvSpec:
    """Raw settings -> validated spec, or ConfigError with every problem.

    from_file: the settings come from a stack file (plain-text secrets there are refused)."""
    problems: list[tuple[str, str]] = plain_secret_problems(raw) if from_file else []
    if str(raw.get("provider", "local")).lower() == "local":
        try:
            raw = local_raw(env, raw)
        except EnvNameError as exc:
            raise ConfigError([("env", str(exc))]) from exc
    cfg, found = check(raw, env)
    problems += found
    problems += port_problems(cfg)
    if cfg.provider_info.kind != "local":
        # A local environment builds its own artifacts; a cloud node downloads the pinned releases.
        arch = cfg.provider_info.architecture(cfg.server_type)
        for name, key, version in (("livekit", "livekitVersion", cfg.livekit_version),
                                   ("caddy", "caddyVersion", cfg.caddy_version)):
            if not any(k == key for k, _ in problems):
                problems += check_pinned(name, version, arch, key=key)
    if problems:
        raise ConfigError(problems)
    return derive(cfg)


def load_file(path: str | Path, env: str | None = None) -> EnvSpec:
    """A stack file -> validated spec (the env defaults to the stack name in the file name)."""
    stack, raw = load_stack_file(path)
    return load(raw, env or stack, from_file=True)


def summary(spec: EnvSpec) -> str:
    cfg = spec.config
    lines = [f"{cfg.env}: provider {cfg.provider} ({cfg.region}, {cfg.server_type}), "
             f"{len(spec.nodes)} node(s), LiveKit {cfg.livekit_host} {cfg.livekit_version}, Caddy {cfg.caddy_version}, "
             f"TURN {', '.join(spec.turn_hosts().values()) or cfg.turn_host}",
             "public ports: " + ", ".join(p.label for p in spec.public_ports())]
    return "\n".join(lines)


def report(source: str, exc: ConfigError) -> None:
    print(f"{source}: {len(exc.problems)} problem(s), nothing was created:", file=sys.stderr)
    for key, msg in exc.problems:
        print(f"  - {key}: {msg}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", help="path of a Pulumi.<stack>.yaml")
    args = ap.parse_args(argv)
    try:
        spec = load_file(args.config)
    except ConfigError as exc:
        report(args.config, exc)
        return 1
    for warning in spec.config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: valid")
    print(summary(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
