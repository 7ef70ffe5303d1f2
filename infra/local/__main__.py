"""python -m infra.local up|down --env <env> [--nodes N] [--retain]"""
from __future__ import annotations

import argparse
import sys

from infra.config import DEFAULTS, ConfigError
from infra.local import artifacts, down, host, up
from infra.local.names import EnvNameError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="create or reuse the local environment, write .stack/<env>/outputs.json")
    p_up.add_argument("--env", default="local")
    p_up.add_argument("--nodes", type=int, default=1, help="number of machines (default 1)")
    p_up.add_argument("--retain", action="store_true", help="keep a half-made environment when a step fails")
    p_down = sub.add_parser("down", help="remove the environment (caches are kept)")
    p_down.add_argument("--env", default="local")
    sub.add_parser("packages", help="print the Debian packages the host needs")
    sub.add_parser("livekit-bin", help="build/unpack the pinned livekit-server and print its path")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            ctx = up.up(args.env, args.nodes, retain=args.retain)
            print(f"env {args.env} is up: outputs in .stack/{args.env}/outputs.json; "
                  f"ssh -i {ctx.ssh_key} -o UserKnownHostsFile={ctx.names.known_hosts} "
                  f"root@{ctx.names.node_public_ip(0)}")
        elif args.command == "down":
            down.down(args.env)
        elif args.command == "livekit-bin":
            print(artifacts.livekit_binary(DEFAULTS["livekitVersion"]))
        else:
            print(" ".join(host.HOST_PACKAGES))
    except (host.LocalEnvError, EnvNameError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
