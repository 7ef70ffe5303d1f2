"""`make validate CONFIG=Pulumi.<stack>.yaml`: check a stack file, print every problem, create nothing."""
from __future__ import annotations

import argparse
import sys

from infra.config import ConfigError, load_stack_file, parse
from infra.spec import EnvSpec, derive


def load_spec(path: str) -> EnvSpec:
    """Stack file -> validated spec (raises ConfigError listing every problem)."""
    stack, raw = load_stack_file(path)
    return derive(parse(raw, env=stack))


def summary(spec: EnvSpec) -> str:
    cfg = spec.config
    lines = [f"{cfg.env}: provider {cfg.provider} ({cfg.region}, {cfg.server_type}), "
             f"{len(spec.nodes)} node(s), LiveKit {cfg.livekit_host}, TURN {cfg.turn_host}",
             "public ports: " + ", ".join(p.label for p in spec.public_ports())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", help="path of a Pulumi.<stack>.yaml")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s), nothing was created:", file=sys.stderr)
        for key, msg in exc.problems:
            print(f"  - {key}: {msg}", file=sys.stderr)
        return 1
    for warning in spec.config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: valid")
    print(summary(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
