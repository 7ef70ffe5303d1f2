"""An npm lockfile's pins, checked before anything is installed (web/build.py, infra/n8n/install.py).

`npm ci` installs exactly package-lock.json and checks each package's sha512 integrity, but only
for entries that carry one, and it does not compare the lockfile with package.json's exact pins.
Standard library only: web/build.py runs under the operator host's system python3.
"""
from __future__ import annotations

import json
from pathlib import Path


class LockfileError(ValueError):
    pass


def locked_versions(root: Path, sections: tuple[str, ...], regenerate: str) -> dict[str, str]:
    """The versions package.json's `sections` pin, once every locked package carries a sha512
    integrity and each pin equals the lockfile's version. `regenerate` says how to fix the lockfile."""
    lock = json.loads((root / "package-lock.json").read_text())
    packages = lock.get("packages", {})
    unpinned = [name for name, meta in packages.items()
                if name and not meta.get("link") and not str(meta.get("integrity", "")).startswith("sha512-")]
    if unpinned:
        raise LockfileError(f"package-lock.json has packages without a sha512 integrity: {', '.join(unpinned[:5])}; "
                            f"regenerate it with {regenerate}")
    manifest = json.loads((root / "package.json").read_text())
    wanted = {name: spec for section in sections for name, spec in manifest.get(section, {}).items()}
    versions = {}
    for name, spec in wanted.items():
        locked = packages.get(f"node_modules/{name}", {}).get("version")
        if spec != locked:
            raise LockfileError(f"{name}: package.json asks for {spec!r} but the lockfile has {locked!r}; "
                                "pin exact versions and regenerate the lockfile")
        versions[name] = locked
    return versions
