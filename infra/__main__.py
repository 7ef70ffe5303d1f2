"""The Pulumi program (Pulumi.yaml `main: infra/`): config -> spec -> provider component -> stack outputs."""
from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs this directory as a script; make `import infra` resolve to the project.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi  # noqa: E402

from infra import validate  # noqa: E402
from infra.cloud import components, pulumi_config  # noqa: E402
from infra.cloud.digitalocean import DigitalOceanStack  # noqa: E402
from infra.cloud.existing import ExistingHosts  # noqa: E402
from infra.cloud.hetzner import HetznerStack  # noqa: E402

NAME = "voicestack"
COMPONENTS = {"hetzner": HetznerStack, "digitalocean": DigitalOceanStack, "existing": ExistingHosts}


def main() -> None:
    given = pulumi_config.read()
    spec = validate.load(given.raw, env=pulumi.get_stack())  # ConfigError: nothing declared yet
    components.check_provisionable(spec.config)
    for warning in spec.config.warnings:
        pulumi.log.warn(warning)
    secrets = components.stack_secrets(NAME, given.secrets)
    component = COMPONENTS[spec.config.provider_info.kind](NAME, components.ProgramArgs(spec=spec))
    outputs = components.stack_outputs(spec, component.nodes, secrets, component.info,
                                       components.published_dns(spec, component.nodes, component.dns_overrides))
    components.export(outputs)
    if components.wants_chained_deploy(spec.config):
        components.chain_deploy(NAME, spec, component, outputs)


if __name__ == "__main__":
    main()
