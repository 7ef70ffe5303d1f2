"""The Pulumi provisioner: `pulumi up` for the stack, then outputs.json from its stack outputs."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from infra import outputs
from infra.cloud import stack_outputs
from infra.cloud.components import SKIP_CHAINED_DEPLOY_ENV
from infra.outputs import ROOT
from infra.spec import EnvSpec
from infra.steps import Progress, StepFailed, command


def _pulumi() -> str:
    found = shutil.which("pulumi")
    if found is None:
        raise StepFailed("the pulumi CLI is not installed; see docs/cloud.md (install it, then pulumi login)")
    return found


@dataclass
class PulumiStack:
    name: str = "pulumi"

    def up(self, spec: EnvSpec, progress: Progress) -> outputs.Outputs:
        # make up runs the deploy as its own step: never chained inside pulumi up as well.
        env = {**os.environ, SKIP_CHAINED_DEPLOY_ENV: "1"}
        progress.line(f"pulumi up --stack {spec.env} (servers, firewall, DNS)")
        command([_pulumi(), "up", "--yes", "--stack", spec.env], env=env, cwd=str(ROOT))
        try:
            out = stack_outputs.to_outputs(stack_outputs.read_stack(spec.env), stack_outputs.default_ssh_key())
        except stack_outputs.StackOutputsError as exc:
            raise StepFailed(str(exc)) from exc
        outputs.write(out)
        return out

    def down(self, env: str, progress: Progress) -> None:
        progress.line(f"pulumi destroy --stack {env}")
        command([_pulumi(), "destroy", "--yes", "--stack", env], cwd=str(ROOT))
        outputs.remove(env)

    def status(self, env: str) -> str:
        return command([_pulumi(), "stack", "--stack", env], capture=True, cwd=str(ROOT)).strip()
