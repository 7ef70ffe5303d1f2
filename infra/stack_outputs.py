"""Turn a Pulumi stack's outputs into `.stack/<env>/outputs.json` (infra.outputs.write).

    python -m infra.stack_outputs --stack prod        # runs `pulumi stack output --json --show-secrets`
    pulumi stack output --json --show-secrets | python -m infra.stack_outputs -
    python -m infra.stack_outputs --from-env          # inside `pulumi up` (the chained deploy command)

The stack outputs carry every field of infra.outputs.Outputs except the operator's private key
path (it belongs to the machine that deploys, not to the state): `--ssh-key`, or
$VOICESTACK_SSH_KEY, or ~/.ssh/id_ed25519.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from infra.outputs import REQUIRED, NodeOut, Outputs, write
from infra.program import OUTPUTS_ENV

DEFAULT_SSH_KEY = "~/.ssh/id_ed25519"


class StackOutputsError(Exception):
    pass


def to_outputs(data: Mapping[str, Any], ssh_key: str) -> Outputs:
    """`pulumi stack output --json --show-secrets` (a mapping) -> Outputs, or StackOutputsError."""
    fields = {f.name for f in dataclasses.fields(Outputs)}
    missing = [k for k in REQUIRED if not data.get(k)]
    if missing:
        raise StackOutputsError(f"the stack outputs lack {', '.join(missing)}; run \"pulumi up\" for this stack "
                                "first (or pass --show-secrets: secrets print as [secret] without it)")
    masked = [k for k in ("api_secret", "turn_secret", "token_key") if data.get(k) == "[secret]"]
    if masked:
        raise StackOutputsError(f"{', '.join(masked)} came back as [secret]; read them with "
                                "\"pulumi stack output --json --show-secrets\"")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise StackOutputsError(f"unexpected stack outputs {', '.join(unknown)}; is this a voicestack stack?")
    values = {k: v for k, v in data.items() if k in fields}
    values["nodes"] = [NodeOut(**{**n, "ssh_key": n.get("ssh_key") or ssh_key}) for n in data["nodes"]]
    values["extra"] = dict(data.get("extra") or {})
    return Outputs(**values)


def _read_stack(stack: str) -> Mapping[str, Any]:
    argv = ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise StackOutputsError("the pulumi CLI is not installed; see docs/cloud.md") from exc
    if proc.returncode != 0:
        raise StackOutputsError(f"failed to read the stack outputs: {' '.join(argv)}\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--stack", help="read the outputs of this stack with the pulumi CLI")
    src.add_argument("--from-env", action="store_true", help=f"read the outputs JSON from ${OUTPUTS_ENV}")
    src.add_argument("file", nargs="?", help="a file with `pulumi stack output --json --show-secrets`, or - for stdin")
    ap.add_argument("--ssh-key", default=os.environ.get("VOICESTACK_SSH_KEY", DEFAULT_SSH_KEY),
                    help="private key the deploy uses (default: $VOICESTACK_SSH_KEY or %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.stack:
            data = _read_stack(args.stack)
        elif args.from_env:
            if OUTPUTS_ENV not in os.environ:
                raise StackOutputsError(f"${OUTPUTS_ENV} is not set; --from-env runs inside `pulumi up`")
            data = json.loads(os.environ[OUTPUTS_ENV])
        else:
            data = json.load(sys.stdin) if args.file == "-" else json.loads(Path(args.file).read_text())
        path = write(to_outputs(data, str(Path(args.ssh_key).expanduser())))
    except (StackOutputsError, ValueError) as exc:
        print(f"failed to write the outputs file: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
