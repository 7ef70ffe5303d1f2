"""`make up ENV=<env> [CONFIG=<stack file>]`: validate -> provision -> deploy -> verify -> summary.

One flat list for every environment. The settings come from CONFIG, else `Pulumi.<env>.yaml`,
else the built-in local defaults; their `provider` picks the provisioner (local machines on
this host, or the Pulumi program). Each step prints a line when it starts and when it ends.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import outputs, provision, validate, verify
from infra.config import ConfigError
from infra.local.host import LocalEnvError
from infra.spec import EnvSpec, Role
from infra.steps import PYTHON, Progress, StepFailed, command, main_status

ROOT = outputs.ROOT


@dataclass
class Run:
    env: str
    config: str | None = None
    retain: bool = False
    spec: EnvSpec | None = None
    out: outputs.Outputs | None = None
    progress: Progress = field(default_factory=Progress)


def load(env: str, config: str | Path | None = None, **overrides: Any) -> EnvSpec:
    """The validated spec of an environment (ConfigError lists every problem); `overrides` are
    settings by key that win over the file's (e.g. nodeCount from `infra.local up --nodes`)."""
    raw, from_file = provision.read_settings(env, config)
    return validate.load({**raw, **overrides}, env, from_file=from_file)


def step_validate(r: Run) -> str:
    try:
        r.spec = load(r.env, r.config)
    except ConfigError as exc:
        raise StepFailed("the configuration has problems, nothing was created:\n" +
                         "\n".join(f"  - {k}: {m}" for k, m in exc.problems)) from exc
    for warning in r.spec.config.warnings:
        r.progress.line(f"warning: {warning}")
    return validate.summary(r.spec).replace("\n", "; ")


def step_provision(r: Run) -> str:
    assert r.spec is not None
    p = provision.get("local" if r.spec.config.provider_info.kind == "local" else "pulumi")
    if hasattr(p, "retain"):
        p.retain = r.retain
    r.out = p.up(r.spec, r.progress.child())
    return f"{p.name}: {len(r.out.nodes)} node(s), outputs in {r.out.paths.outputs.relative_to(ROOT)}"


def step_deploy(r: Run) -> str:
    command([PYTHON, "-m", "deploy", "--env", r.env], cwd=str(ROOT))
    return "converged"


def step_verify(r: Run) -> str:
    outputs.EnvPaths(r.env).verify_results.unlink(missing_ok=True)  # only this run's results
    command(verify.argv(r.env), cwd=str(ROOT))
    return "passed"


def password_hint(out: outputs.Outputs) -> str:
    """Where the voice page's password is (local: the 0600 outputs file; cloud: a Pulumi secret)."""
    if out.client_netns:
        return f"call_password in {out.paths.outputs.relative_to(ROOT)} (root only)"
    return "pulumi stack output --show-secrets call_password"


def summary(out: outputs.Outputs, progress: Progress) -> None:
    """What the operator needs next. No secret values: a terminal's scrollback and CI logs keep what
    is printed, so the summary says where the password is and how to mint a token instead."""
    progress.line(f"environment {out.env} is up")
    print(f"  LiveKit URL:     {out.livekit_url}")
    print(f"  token endpoint:  {out.token_endpoint}")
    print(f"  TURN:            {', '.join(out.spec.turn_hosts().values()) or out.turn_domain}")
    print(f"  test token:      make token ENV={out.env} ROOM=voice-test")
    cfg = out.spec.config
    if out.spec.nodes_with(Role.AGENT):
        if cfg.call_public:
            print(f"  voice page:      {out.spec.call_url}  (public demo mode: no password, 5-minute demo calls)")
        else:
            print(f"  voice page:      {out.spec.call_url}  user {cfg.call_user}, password: "
                  f"{password_hint(out)}")
    results = out.paths.verify_results
    if results.is_file():
        for condition, r in json.loads(results.read_text()).get("round_trips", {}).items():
            print(f"  round trip [{condition}]: agent answered {r['answer']!r} in {r['latency_s']}s (voice to voice)")
    if out.client_netns:
        print(f"  try it:          make shell ENV={out.env}   (a shell on the emulated internet), then")
        print(f"                   curl --cacert {out.ca_bundle} https://{out.livekit_domain}/")
        # This machine reaches the nodes (and a cluster's balancer) directly; a browser here needs
        # the name and the local CA.
        first = out.balancer_ip or out.nodes[0].public_ip
        print(f"  page from here:  chromium --host-resolver-rules='MAP {out.livekit_domain} {first}' "
              f"{out.spec.call_url}   (trust {out.ca_bundle} first: README, 'The voice page')")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="local")
    ap.add_argument("--config", default=os.environ.get("CONFIG") or None,
                    help="stack file (default Pulumi.<env>.yaml, else the built-in local defaults)")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--retain", action="store_true", help="local: keep a half-made environment for debugging")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    r = Run(env=args.env, config=args.config, retain=args.retain)
    steps = [("validate", lambda: step_validate(r)), ("provision", lambda: step_provision(r)),
             ("deploy", lambda: step_deploy(r))]
    if not args.skip_verify:
        steps.append(("verify", lambda: step_verify(r)))
    status = main_status(r.progress, steps, errors=(StepFailed, LocalEnvError, outputs.OutputsError))
    if status == 0:
        summary(outputs.read(r.env), r.progress)
    return status


if __name__ == "__main__":
    sys.exit(main())
