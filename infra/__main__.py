"""The Pulumi program (Pulumi.yaml `main: infra/`): config -> spec -> provider -> outputs -> deploy."""
from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs this directory as a script; make `import infra` resolve to the project.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi  # noqa: E402

from infra import program, pulumi_config  # noqa: E402
from infra.config import parse  # noqa: E402
from infra.digitalocean import DigitalOceanStack  # noqa: E402
from infra.existing import ExistingHosts  # noqa: E402
from infra.hetzner import HetznerStack  # noqa: E402
from infra.spec import derive  # noqa: E402

NAME = "voicestack"
COMPONENTS = {"hetzner": HetznerStack, "digitalocean": DigitalOceanStack, "existing": ExistingHosts}


def main() -> None:
    given = pulumi_config.read()
    spec = derive(parse(given.raw, env=pulumi.get_stack()))  # ConfigError: nothing declared yet
    program.check_provisionable(spec.config)
    for warning in spec.config.warnings:
        pulumi.log.warn(warning)
    secrets = program.stack_secrets(NAME, given.secrets)
    component = COMPONENTS[spec.config.provider_info.kind](NAME, program.ProgramArgs(spec=spec))
    outputs = program.stack_outputs(spec, component.nodes, secrets, component.extra)
    program.export(outputs)
    program.chain_deploy(NAME, spec, component, outputs)


if __name__ == "__main__":
    main()
