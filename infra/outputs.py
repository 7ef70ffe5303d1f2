"""`.stack/<env>/outputs.json`: the one contract between provisioning, deploy and verify.

Written by every provisioner (local machines, Pulumi stacks), read by deploy/inventory.py,
the verification suite and the operator tools. It holds secrets, so it is written 0600.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = ROOT / ".stack"

REQUIRED = ("env", "livekit_url", "api_key", "api_secret", "turn_domain", "token_endpoint", "nodes")


@dataclass(frozen=True)
class NodeOut:
    name: str
    public_ip: str
    private_ip: str | None
    ssh_user: str
    ssh_key: str
    roles: list[str]
    ssh_port: int = 22


@dataclass(frozen=True)
class Outputs:
    env: str
    livekit_url: str
    api_key: str
    api_secret: str
    turn_domain: str
    token_endpoint: str
    nodes: list[NodeOut]
    livekit_domain: str = ""
    turn_secret: str = ""
    token_key: str = ""
    config_file: str = ""          # the stack file the spec came from ("" = built-in local defaults)
    ca_bundle: str | None = None   # local: the ACME root to trust
    dns_server: str | None = None  # local: the environment's DNS server
    client_netns: str | None = None  # local: a namespace on the internet side of the cloud firewall
    extra: dict[str, Any] = field(default_factory=dict)


def path_for(env: str) -> Path:
    return STACK_DIR / env / "outputs.json"


def write(out: Outputs) -> Path:
    """Write atomically with mode 0600 (secrets inside); the directory is 0700."""
    target = path_for(out.env)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o700)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(out), fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, target)
    return target


class OutputsError(Exception):
    pass


def read(env: str) -> Outputs:
    target = path_for(env)
    if not target.is_file():
        raise OutputsError(f"{target} does not exist; run 'make up ENV={env}' first")
    data = json.loads(target.read_text())
    missing = [k for k in REQUIRED if not data.get(k)]
    if missing:
        raise OutputsError(f"{target} lacks {', '.join(missing)}; re-run 'make up ENV={env}'")
    data["nodes"] = [NodeOut(**n) for n in data["nodes"]]
    return Outputs(**data)
