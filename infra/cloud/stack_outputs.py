"""Turn a Pulumi stack's outputs into `.stack/<env>/outputs.json`, with the shared assembler.

    python -m infra.cloud.stack_outputs --stack prod    # runs `pulumi stack output --json --show-secrets`
    pulumi stack output --json --show-secrets | python -m infra.cloud.stack_outputs -
    python -m infra.cloud.stack_outputs --from-env      # inside `pulumi up` (deployOnUp)

The stack outputs carry the derived spec, each node's addresses, the published DNS, a cluster's
load balancer address and the secrets (infra.cloud.components.stack_outputs). The operator's
private key path belongs to the machine that deploys, not to the state: `--ssh-key`, or
$VOICESTACK_SSH_KEY, or ~/.ssh/id_ed25519.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from infra import outputs
from infra import spec as specmod
from infra.cloud.components import OUTPUTS_ENV
from infra.codec import DecodeError

DEFAULT_SSH_KEY = "~/.ssh/id_ed25519"
SECRETS = ("api_secret", "turn_secret", "token_key", "call_password")
EXPECTED = ("spec", "nodes", *SECRETS)


class StackOutputsError(Exception):
    pass


def to_outputs(data: Mapping[str, Any], ssh_key: str) -> outputs.Outputs:
    """`pulumi stack output --json --show-secrets` (a mapping) -> Outputs, or StackOutputsError."""
    missing = [k for k in EXPECTED if not data.get(k)]
    if missing:
        raise StackOutputsError(f"the stack outputs lack {', '.join(missing)}; run \"pulumi up\" for this stack "
                                "first (is this a voicestack stack?)")
    masked = [k for k in SECRETS if data.get(k) == "[secret]"]
    if masked:
        raise StackOutputsError(f"{', '.join(masked)} came back as [secret]; read them with "
                                "\"pulumi stack output --json --show-secrets\"")
    try:
        spec = specmod.from_json(data["spec"])
    except DecodeError as exc:
        raise StackOutputsError(f"the stack's spec output does not fit this checkout ({exc}); "
                                "run \"pulumi up\" with this checkout") from exc
    nodes = [outputs.NodeOut(name=n["name"], public_ip=n["public_ip"], private_ip=n.get("private_ip"),
                             ssh_user=n["ssh_user"], ssh_key=ssh_key, roles=list(n["roles"]),
                             ssh_port=int(n.get("ssh_port", 22)), network=n.get("network", "direct"),
                             interface_ip=n.get("interface_ip"))
             for n in data["nodes"]]
    balancer_ip = _balancer_ip(spec, data)
    try:
        return outputs.assemble(spec, nodes, api_secret=data["api_secret"], turn_secret=data["turn_secret"],
                                token_key=data["token_key"], call_password=data["call_password"],
                                dns=data.get("dns"), balancer_ip=balancer_ip,
                                deploy=outputs.DeployInputs(known_hosts=str(outputs.EnvPaths(spec.env).known_hosts)))
    except outputs.OutputsError as exc:
        raise StackOutputsError(str(exc)) from exc


def _balancer_ip(spec: specmod.EnvSpec, data: Mapping[str, Any]) -> str | None:
    """The load balancer's address (None: no balancer, or a stack that only published it in `dns`,
    which assemble then checks), or StackOutputsError when the stack publishes the balanced name
    elsewhere: that record holds exactly the balancer's address."""
    address = data.get("balancer_ip")
    if spec.balancer is None or not address:
        return None
    record = next(r for r in spec.dns_records if r.balancer)
    published = (data.get("dns") or {}).get(record.name)
    if published is not None and list(published) != [address]:
        raise StackOutputsError(f"the stack publishes {record.name} at {published}, not at its load balancer "
                                f"{address}; run \"pulumi up\" with this checkout")
    return address


def read_stack(stack: str) -> Mapping[str, Any]:
    argv = ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise StackOutputsError("the pulumi CLI is not installed; see docs/cloud.md") from exc
    if proc.returncode != 0:
        raise StackOutputsError(f"failed to read the stack outputs: {' '.join(argv)}\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def default_ssh_key() -> str:
    return str(Path(os.environ.get("VOICESTACK_SSH_KEY", DEFAULT_SSH_KEY)).expanduser())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--stack", help="read the outputs of this stack with the pulumi CLI")
    src.add_argument("--from-env", action="store_true", help=f"read the outputs JSON from ${OUTPUTS_ENV}")
    src.add_argument("file", nargs="?", help="a file with `pulumi stack output --json --show-secrets`, or - for stdin")
    ap.add_argument("--ssh-key", default=default_ssh_key(),
                    help="private key the deploy uses (default: $VOICESTACK_SSH_KEY or %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.stack:
            data = read_stack(args.stack)
        elif args.from_env:
            if OUTPUTS_ENV not in os.environ:
                raise StackOutputsError(f"${OUTPUTS_ENV} is not set; --from-env runs inside `pulumi up`")
            data = json.loads(os.environ[OUTPUTS_ENV])
        else:
            data = json.load(sys.stdin) if args.file == "-" else json.loads(Path(args.file).read_text())
        path = outputs.write(to_outputs(data, str(Path(args.ssh_key).expanduser())))
    except (StackOutputsError, ValueError) as exc:
        print(f"failed to write the outputs file: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
