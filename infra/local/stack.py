"""What a local environment adds to a stack's settings: its zone, its CA and the operator's address.

A local environment takes the same stack file as a cloud one (`Pulumi.<env>.yaml` with
`voicestack:provider: local`), or none at all (the built-in defaults). Either way the zone is
`<env>.test` unless set, certificates come from the environment's own ACME server, and SSH is
open to the host's address on the emulated internet, where the deploy comes from.
"""
from __future__ import annotations

from typing import Any, Mapping

from infra.local.names import EnvNames


def local_raw(env: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` with the local environment's defaults filled in (raises EnvNameError for a bad env name)."""
    names = EnvNames(env)
    out: dict[str, Any] = {"provider": "local", "domain": f"{env}.test", "acmeCa": "local", **raw}
    admin = list(out.get("adminCidrs") or [])
    operator = f"{names.operator_ip}/32"
    if operator not in admin:
        admin.append(operator)
    out["adminCidrs"] = admin
    return out
