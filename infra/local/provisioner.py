"""The local provisioner: machines on this host that behave like VPSs (see infra/local/up.py)."""
from __future__ import annotations

from dataclasses import dataclass

from infra import outputs
from infra.local import down as local_down
from infra.local import machines
from infra.local import up as local_up
from infra.local.names import EnvNames
from infra.spec import EnvSpec
from infra.steps import Progress


@dataclass
class LocalMachines:
    name: str = "local machines"
    retain: bool = False  # keep a half-made environment for debugging

    def up(self, spec: EnvSpec, progress: Progress) -> outputs.Outputs:
        local_up.up(spec, progress, retain=self.retain)
        return outputs.read(spec.env)

    def down(self, env: str, progress: Progress) -> None:
        local_down.down(env, progress)

    def status(self, env: str) -> str:
        names = EnvNames(env)
        running = machines.running_machines(names)
        return (f"local env {env}: {len(running)} machine(s) running ({', '.join(running) or 'none'}); "
                f"outputs {'present' if outputs.path_for(env).is_file() else 'absent'}")
