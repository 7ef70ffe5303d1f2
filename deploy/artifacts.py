"""Pinned release artifacts: the manifest (deploy/artifacts.json), local overrides, and checks.

Each artifact names the digest algorithm its project publishes (livekit: sha256 in the
release's checksums.txt; caddy: sha512, the only checksums Caddy releases carry), and every
version pins one digest per architecture in it. `check_pinned` is pure and runs in
`make validate` and before Pulumi declares any resource, so an unpinned or unknown version fails
with nothing created. `resolve` gives the deploy the artifact of one version, with a local
environment's override (its own build, served by the host) replacing url and digest.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

MANIFEST = Path(__file__).resolve().parent / "artifacts.json"
#: `uname -m` -> Debian architecture (the release tarballs' naming).
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
#: Digest algorithms the deploy can check on a node (`<algorithm>sum` from coreutils) -> hex length.
ALGORITHMS = {"sha256": 64, "sha512": 128}


class ArtifactError(Exception):
    """An artifact cannot be installed as pinned; the message says what to fix."""


def _valid_digest(algorithm: str, digest: str | None) -> bool:
    return bool(digest) and re.fullmatch(f"[0-9a-f]{{{ALGORITHMS[algorithm]}}}", str(digest)) is not None


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    binary: str
    urls: dict[str, str]              # arch (amd64|arm64) -> URL
    digests: dict[str, str | None]    # arch -> hex digest in `algorithm` (None: not pinned)
    algorithm: str = "sha256"         # sha256 | sha512

    def for_arch(self, arch: str) -> tuple[str, str]:
        """(url, digest) for a Debian arch, or ArtifactError when it is not pinned."""
        if arch not in self.urls:
            raise ArtifactError(f"artifact {self.name} {self.version} has no build for {arch}; "
                                f"known: {', '.join(sorted(self.urls))}")
        digest = self.digests.get(arch)
        if not _valid_digest(self.algorithm, digest):
            raise ArtifactError(
                f"artifact {self.name} {self.version} ({arch}) has no {self.algorithm} in {MANIFEST.name}; refusing "
                f"to install an unverified binary — download {self.urls[arch]}, check it against the release's "
                f"checksums and record its {self.algorithm} in the manifest (docs/cloud.md, 'a new version')")
        assert digest is not None
        return self.urls[arch], digest


@dataclass(frozen=True)
class Override:
    """A local environment's own build of an artifact (one architecture, served by the host)."""

    version: str
    url: str
    digest: str
    algorithm: str = "sha256"

    @classmethod
    def from_outputs(cls, name: str, entry: Mapping[str, Any]) -> "Override":
        """outputs.json deploy.artifacts[name]: {version, url, <algorithm>: digest}; the digest's key names
        its algorithm (so files written before sha512 existed still read as sha256)."""
        found = [a for a in ALGORITHMS if entry.get(a)]
        if len(found) != 1 or not entry.get("url") or not entry.get("version"):
            raise ArtifactError(f"deploy.artifacts.{name} in the outputs needs version, url and exactly one of "
                                f"{', '.join(ALGORITHMS)}; re-run the local environment's up to rewrite it")
        return cls(version=str(entry["version"]), url=str(entry["url"]), digest=str(entry[found[0]]),
                   algorithm=found[0])


def load_manifest(path: Path = MANIFEST) -> dict[str, dict[str, Artifact]]:
    """name -> version -> Artifact."""
    doc = json.loads(path.read_text())
    found: dict[str, dict[str, Artifact]] = {}
    for name, entry in doc.items():
        if name.startswith("_"):
            continue
        algorithm = entry.get("algorithm", "sha256")
        if algorithm not in ALGORITHMS:
            raise ArtifactError(f"{path.name}: {name} uses algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        for version, pins in entry["versions"].items():
            digests = dict(pins.get(algorithm) or {})
            urls = {arch: entry["url"].format(version=version, arch=arch) for arch in digests}
            found.setdefault(name, {})[version] = Artifact(name, version, entry.get("binary", name), urls, digests,
                                                           algorithm)
    return found


def check_pinned(name: str, version: str, arch: str, manifest: Mapping[str, Mapping[str, Artifact]] | None = None,
                 key: str = "livekitVersion") -> list[tuple[str, str]]:
    """Config problems when `name` `version` is not fully pinned for `arch` (pure: make validate)."""
    manifest = load_manifest() if manifest is None else manifest
    versions = manifest.get(name, {})
    if version not in versions:
        algorithm = next(iter(versions.values())).algorithm if versions else "sha256"
        return [(key, f"{name} {version} is not in {MANIFEST.relative_to(MANIFEST.parents[1])} (pinned: "
                      f"{', '.join(sorted(versions)) or 'none'}); use a pinned version, or add {version} with the "
                      f"{algorithm} of each architecture from the release's checksums (docs/cloud.md)")]
    try:
        versions[version].for_arch(arch)
    except ArtifactError as exc:
        return [(key, str(exc))]
    return []


def resolve(name: str, version: str, overrides: Mapping[str, Override]) -> Artifact:
    """The artifact the deploy installs: the local override when there is one, else the manifest's pin."""
    pinned = load_manifest().get(name, {})
    override = overrides.get(name)
    if override is not None:
        if override.version != version:
            raise ArtifactError(f"the environment built {name} {override.version} but the spec asks for {version}; "
                                "re-run make up so it builds the requested version")
        binary = next(iter(pinned.values())).binary if pinned else name
        # A local environment builds one architecture; its URL and digest stand for every arch.
        return Artifact(name, version, binary, {a: override.url for a in ARCHES.values()},
                        {a: override.digest for a in ARCHES.values()}, override.algorithm)
    if version not in pinned:
        raise ArtifactError(f"{name} {version} is not pinned in {MANIFEST.name} (pinned: "
                            f"{', '.join(sorted(pinned)) or 'none'}); add it with its digest per architecture")
    return pinned[version]
