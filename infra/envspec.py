"""Rebuild an environment's spec from its outputs.json (deploy and verify need nothing else)."""
from __future__ import annotations

from infra.config import load_stack_file, local_defaults, parse
from infra.outputs import Outputs
from infra.spec import EnvSpec, derive


def spec_from_outputs(out: Outputs) -> EnvSpec:
    if out.config_file:
        _, raw = load_stack_file(out.config_file)
        return derive(parse(raw, env=out.env))
    raw = out.extra.get("config")
    if raw is not None:
        return derive(parse(raw, env=out.env))
    return derive(local_defaults(out.env, node_count=len(out.nodes)))
