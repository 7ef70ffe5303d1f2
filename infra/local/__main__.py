"""python -m infra.local up|down|status --env <env> [--config F] [--nodes N] [--network direct|nat] [--retain]
python -m infra.local power --env <env> --node <node> off|on|cycle
python -m infra.local shell --env <env> [-- command]

`up` takes the same settings as `make up` (CONFIG, else Pulumi.<env>.yaml, else the built-in
defaults); `--nodes` overrides nodeCount, `--network` the networking model (network). `power`
does to one machine what a cloud console does: `off` pulls the plug (the machine's PID 1 is
killed, nothing inside shuts down), `on` boots it and waits for SSH, `cycle` is both. A reboot
from inside (`systemctl reboot`) needs no command: the machine comes back by itself. `shell`
runs on the environment's emulated internet. `packages` prints the Debian packages the host
needs, `livekit-bin` / `caddy-bin` build (or find) the pinned livekit-server / caddy and print
its path.
"""
from __future__ import annotations

import argparse
import sys

from infra import up as pipeline
from infra.config import DEFAULTS, ConfigError
from infra.local import artifacts, host, power
from infra.local.names import EnvNameError
from infra.local.provisioner import LocalMachines
from infra.outputs import OutputsError
from infra.steps import Progress, StepFailed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="create or reuse the local environment, write .stack/<env>/outputs.json")
    p_up.add_argument("--env", default="local")
    p_up.add_argument("--config", default=None, help="stack file (default Pulumi.<env>.yaml, else built-in defaults)")
    p_up.add_argument("--nodes", type=int, default=None, help="number of machines (overrides nodeCount)")
    p_up.add_argument("--network", default=None, help="direct | nat: emulate 1:1 NAT in front of each machine "
                      "(overrides network)")
    p_up.add_argument("--retain", action="store_true", help="keep a half-made environment when a step fails")
    for name, text in (("down", "remove the environment (caches are kept)"), ("status", "what is running")):
        sub.add_parser(name, help=text).add_argument("--env", default="local")
    p_shell = sub.add_parser("shell", help="a shell (or `-- command`) on the environment's emulated internet")
    p_shell.add_argument("--env", default="local")
    p_shell.add_argument("command_args", nargs="*", metavar="command")
    p_power = sub.add_parser("power", help="power one machine off (plug pulled), on, or cycle it")
    p_power.add_argument("--env", default="local")
    p_power.add_argument("--node", required=True, help="node name, e.g. node-1")
    p_power.add_argument("action", choices=("off", "on", "cycle"))
    sub.add_parser("packages", help="print the Debian packages the host needs")
    sub.add_parser("livekit-bin", help="build/unpack the pinned livekit-server and print its path")
    sub.add_parser("caddy-bin", help="build/unpack the pinned caddy and print its path")
    args = parser.parse_args(argv)
    machines = LocalMachines()
    try:
        if args.command == "up":
            overrides = {key: value for key, value in (("nodeCount", args.nodes), ("network", args.network))
                         if value is not None}
            spec = pipeline.load(args.env, args.config, **overrides)
            if spec.config.provider_info.kind != "local":
                raise ConfigError([("provider", f"is {spec.config.provider}, not local; use make up ENV={args.env}")])
            machines.retain = args.retain
            out = machines.up(spec, Progress())
            node = out.nodes[0]
            print(f"env {args.env} is up: outputs in {out.paths.outputs}; "
                  f"ssh -i {node.ssh_key} -o UserKnownHostsFile={out.deploy.known_hosts} root@{node.public_ip}")
        elif args.command == "down":
            machines.down(args.env, Progress())
        elif args.command == "power":
            print(power.power(args.env, args.node, args.action, Progress()))
        elif args.command == "status":
            print(machines.status(args.env))
        elif args.command == "shell":
            from infra import outputs
            from infra.local import shell
            shell.exec_in_client_namespace(outputs.read(args.env), args.command_args)
        elif args.command == "livekit-bin":
            print(artifacts.livekit_binary(DEFAULTS["livekitVersion"]))
        elif args.command == "caddy-bin":
            print(artifacts.caddy_binary(DEFAULTS["caddyVersion"]))
        else:
            print(" ".join(host.HOST_PACKAGES))
    except ConfigError as exc:
        print("error: the configuration has problems:\n" + "\n".join(f"  - {k}: {m}" for k, m in exc.problems),
              file=sys.stderr)
        return 1
    except (host.LocalEnvError, EnvNameError, StepFailed, OutputsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
