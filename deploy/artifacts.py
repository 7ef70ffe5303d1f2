"""Pinned release artifacts: the manifest (deploy/artifacts.json), local overrides, and checks.

`check_pinned` is pure and runs in `make validate` and before Pulumi declares any resource, so
an unpinned or unknown version fails with nothing created. `resolve` gives the deploy the
artifact of one version, with a local environment's override (its own build, served by the
host) replacing url and sha256.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

MANIFEST = Path(__file__).resolve().parent / "artifacts.json"
#: `uname -m` -> Debian architecture (the release tarballs' naming).
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(Exception):
    """An artifact cannot be installed as pinned; the message says what to fix."""


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    binary: str
    urls: dict[str, str]              # arch (amd64|arm64) -> URL
    sha256: dict[str, str | None]     # arch -> sha256 (None: not pinned)

    def for_arch(self, arch: str) -> tuple[str, str]:
        """(url, sha256) for a Debian arch, or ArtifactError when it is not pinned."""
        if arch not in self.urls:
            raise ArtifactError(f"artifact {self.name} {self.version} has no build for {arch}; "
                                f"known: {', '.join(sorted(self.urls))}")
        sha = self.sha256.get(arch)
        if not sha or not _SHA256.match(sha):
            raise ArtifactError(
                f"artifact {self.name} {self.version} ({arch}) has no sha256 in {MANIFEST.name}; refusing to "
                f"install an unverified binary — download {self.urls[arch]}, check it against the release's "
                "checksums and record its sha256 in the manifest (docs/cloud.md, 'a new LiveKit version')")
        return self.urls[arch], sha


@dataclass(frozen=True)
class Override:
    """A local environment's own build of an artifact (one architecture, served by the host)."""

    version: str
    url: str
    sha256: str


def load_manifest(path: Path = MANIFEST) -> dict[str, dict[str, Artifact]]:
    """name -> version -> Artifact."""
    doc = json.loads(path.read_text())
    found: dict[str, dict[str, Artifact]] = {}
    for name, entry in doc.items():
        if name.startswith("_"):
            continue
        for version, pins in entry["versions"].items():
            sha = dict(pins["sha256"])
            urls = {arch: entry["url"].format(version=version, arch=arch) for arch in sha}
            found.setdefault(name, {})[version] = Artifact(name, version, entry.get("binary", name), urls, sha)
    return found


def check_pinned(name: str, version: str, arch: str, manifest: Mapping[str, Mapping[str, Artifact]] | None = None,
                 key: str = "livekitVersion") -> list[tuple[str, str]]:
    """Config problems when `name` `version` is not fully pinned for `arch` (pure: make validate)."""
    manifest = load_manifest() if manifest is None else manifest
    versions = manifest.get(name, {})
    if version not in versions:
        return [(key, f"{name} {version} is not in {MANIFEST.relative_to(MANIFEST.parents[1])} (pinned: "
                      f"{', '.join(sorted(versions)) or 'none'}); use a pinned version, or add {version} with the "
                      "sha256 of each architecture from the release's checksums.txt (docs/cloud.md)")]
    try:
        versions[version].for_arch(arch)
    except ArtifactError as exc:
        return [(key, str(exc))]
    return []


def resolve(name: str, version: str, overrides: Mapping[str, Override]) -> Artifact:
    """The artifact the deploy installs: the local override when there is one, else the manifest's pin."""
    override = overrides.get(name)
    if override is not None:
        if override.version != version:
            raise ArtifactError(f"the environment built {name} {override.version} but the spec asks for {version}; "
                                "re-run make up so it builds the requested version")
        binary = next(iter(load_manifest().get(name, {}).values())).binary if load_manifest().get(name) else name
        # A local environment builds one architecture; its URL and sha256 stand for every arch.
        return Artifact(name, version, binary, {a: override.url for a in ARCHES.values()},
                        {a: override.sha256 for a in ARCHES.values()})
    versions = load_manifest().get(name, {})
    if version not in versions:
        raise ArtifactError(f"{name} {version} is not pinned in {MANIFEST.name} (pinned: "
                            f"{', '.join(sorted(versions)) or 'none'}); add it with its sha256 per architecture")
    return versions[version]
