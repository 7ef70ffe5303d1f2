"""`make up ENV=<env>`: provision -> deploy -> verify, one progress line per step, then a summary.

ENV names a cloud stack when `Pulumi.<env>.yaml` exists (provisioned by `pulumi up`),
otherwise a local environment of that name (machines on this host).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from infra.outputs import ROOT, read
from infra.steps import PYTHON, Progress, StepFailed, command


def stack_file(env: str) -> Path | None:
    path = ROOT / f"Pulumi.{env}.yaml"
    return path if path.is_file() else None


def provision(env: str) -> None:
    if stack_file(env) is None:
        command([PYTHON, "-m", "infra.local", "up", "--env", env])
        return
    if shutil.which("pulumi") is None:
        raise StepFailed("the pulumi CLI is not installed; see docs/cloud.md (install it, then pulumi login)")
    command([PYTHON, "-m", "infra.validate", str(stack_file(env))])
    command(["pulumi", "up", "--yes", "--stack", env])
    command([PYTHON, "-m", "infra.stack_outputs", "--stack", env])


def deploy(env: str) -> None:
    command([PYTHON, "-m", "deploy", "--env", env])


def verify(env: str) -> None:
    (ROOT / ".stack" / env / "roundtrip.json").unlink(missing_ok=True)  # only this run's results
    command([PYTHON, "-m", "pytest", "tests/verify", f"--env={env}", "-q", "-p", "no:cacheprovider"])


def summary(env: str, p: Progress) -> None:
    out = read(env)
    token = command(["scripts/generate_livekit_token.sh", "--json", "voice-test"],
                    env={**os.environ, "ENV": env}, capture=True)
    p.line(f"environment {env} is up")
    print(f"  LiveKit URL:     {out.livekit_url}")
    print(f"  token endpoint:  {out.token_endpoint}")
    print(f"  TURN:            {out.turn_domain}")
    print(f"  test token:      {token.strip()}")
    trips = ROOT / ".stack" / env / "roundtrip.json"
    if trips.is_file():
        for condition, r in json.loads(trips.read_text()).items():
            print(f"  round trip [{condition}]: agent answered {r['answer']!r} in {r['latency_s']}s (voice to voice)")
    if out.client_netns:
        print(f"  try it:          ip netns exec {out.client_netns} curl --cacert {out.ca_bundle} "
              f"https://{out.livekit_domain}/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="local")
    ap.add_argument("--skip-verify", action="store_true")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    p = Progress()
    try:
        p.run("provision", lambda: provision(args.env))
        if stack_file(args.env) is not None:
            p.line("deploy ran inside pulumi up (its chained command); re-run alone with make deploy")
        elif (ROOT / "deploy" / "__main__.py").is_file():
            p.run("deploy", lambda: deploy(args.env))
        else:
            p.line("deploy is not built yet: stopping after provisioning")
            return 0
        if not args.skip_verify and (ROOT / "tests" / "verify" / "conftest.py").is_file():
            p.run("verify", lambda: verify(args.env))
        summary(args.env, p)
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
