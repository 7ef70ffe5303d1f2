"""Release artifacts for the machines, built from the Go module proxy and served by the host.

The machines cannot reach GitHub releases, so livekit-server and Caddy are built at their
pinned versions (`go install <module>/cmd/...@v<version>`), packed in the upstream release
layout (`livekit_<v>_linux_amd64.tar.gz` holding `livekit-server`, `caddy_<v>_linux_amd64.tar.gz`
holding `caddy`) and served over HTTP from the gateway. The deploy's manifest entry for this env
overrides only `url` and the digest (in the manifest's algorithm: sha256 for LiveKit, sha512 for
Caddy, so the deploy checks a local build exactly the way it checks a release).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shlex
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.local import background, host
from infra.local.names import CACHE, HTTP_PORT, EnvNames

GO = CACHE / "go"
ARTIFACTS = CACHE / "artifacts"
ARCH = "amd64"


@dataclass(frozen=True)
class GoRelease:
    """How one pinned release is rebuilt from the Go module proxy, and what its tarball looks like."""

    name: str         # the manifest's name (deploy/artifacts.json)
    module: str       # the main module, as `go version -m` reports it
    package: str      # what `go install` builds
    built: str        # the file go install writes into GOBIN
    packed: str       # the binary's name inside the release tarball
    tarball: str      # the release file name, with {version} and {arch}
    algorithm: str    # the digest the deploy checks (the manifest's algorithm for this artifact)
    first_build: str  # what a first build costs here, for the progress line
    #: Extra `go install` flags that make the build match the project's own release build. Go
    #: records -tags in the binary (`go version -m`) but not -ldflags under -trimpath, so
    #: `reports_version` checks what the ldflags set: a build made otherwise is rebuilt.
    flags: tuple[str, ...] = ()
    #: A subcommand whose output starts with "v<version>" (None: no such check).
    reports_version: str | None = None

    def go_flags(self, version: str) -> list[str]:
        return [f.format(version=version) for f in self.flags]


LIVEKIT = GoRelease("livekit", "github.com/livekit/livekit-server", "github.com/livekit/livekit-server/cmd/server",
                    "server", "livekit-server", "livekit_{version}_linux_{arch}.tar.gz", "sha256", "about 3.5 min")
# Caddy's releases (its .goreleaser.yml) build with these tags and -s -w. Built as the main module,
# Caddy cannot read its own version from the build info ("unknown"); the release build has it as a
# dependency. CustomVersion (caddy.go, Version()) gives `caddy version` the same answer.
CADDY = GoRelease("caddy", "github.com/caddyserver/caddy/v2", "github.com/caddyserver/caddy/v2/cmd/caddy",
                  "caddy", "caddy", "caddy_{version}_linux_{arch}.tar.gz", "sha512", "about 10 min on 2 busy cores",
                  flags=("-tags=nobadger,nomysql,nopgx",
                         "-ldflags=-s -w -X github.com/caddyserver/caddy/v2.CustomVersion=v{version}"),
                  reports_version="version")
#: Kept for callers of the LiveKit-only API.
LIVEKIT_MODULE = LIVEKIT.module


def go_env() -> dict[str, str]:
    return dict(os.environ, GOPATH=str(GO), GOMODCACHE=str(GO / "mod"), GOCACHE=str(GO / "build"),
                GOBIN=str(GO / "bin"), CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false",
                PATH=os.environ.get("PATH", "") + ":/usr/local/go/bin")


def _binary_version(binary: Path, module: str = LIVEKIT.module, flags: tuple[str, ...] = (),
                    reports_version: str | None = None) -> str | None:
    """The version of `module` a Go binary was built from, or None (missing, or built otherwise)."""
    go = host.which("go")
    if not binary.exists() or go is None:
        return None
    out = host.run([go, "version", "-m", str(binary)], check=False).stdout
    recorded = {line.split("\t", 2)[2] for line in out.splitlines() if line.startswith("\tbuild\t")}
    if not {f for f in flags if not f.startswith("-ldflags")} <= recorded:
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "mod" and parts[1] == module:
            if reports_version is not None:
                said = host.run([str(binary), reports_version], check=False).stdout.split()
                if not said or said[0] != parts[2]:
                    return None
            return parts[2].lstrip("v")
    return None


def release_tarball(release: GoRelease, version: str, log: Path,
                    say: Callable[[str], None] = lambda _m: None) -> tuple[Path, str, bool]:
    """(tarball, digest in release.algorithm, built now?) for `release` at `version` (one builder at a time)."""
    with host.cache_lock(release.name):
        return _release_tarball(release, version, log, say)


def release_binary(release: GoRelease, version: str) -> Path:
    """The binary of the packed release artifact, unpacked once (for tests on the host)."""
    tarball, digest, _ = release_tarball(release, version, ARTIFACTS / "build.log",
                                         say=lambda m: print(m, file=sys.stderr, flush=True))
    target = ARTIFACTS / f"{release.packed}-{version}-{digest[:12]}"
    if not target.exists():
        with tarfile.open(tarball) as tar:
            member = tar.extractfile(release.packed)
            if member is None:
                raise host.LocalEnvError(f"{tarball} has no {release.packed} inside; delete it to rebuild")
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(member.read())
            tmp.chmod(0o755)
            tmp.replace(target)
    return target


def livekit_tarball(version: str, log: Path) -> tuple[Path, str, bool]:
    """(tarball, sha256, built now?) for livekit-server `version`."""
    return release_tarball(LIVEKIT, version, log)


def livekit_binary(version: str) -> Path:
    """The livekit-server of the packed release artifact (for tests on the host)."""
    return release_binary(LIVEKIT, version)


def caddy_binary(version: str) -> Path:
    """The caddy of the packed release artifact (for tests on the host)."""
    return release_binary(CADDY, version)


def _release_tarball(release: GoRelease, version: str, log: Path,
                     say: Callable[[str], None]) -> tuple[Path, str, bool]:
    """(tarball, digest, built now?), cached under /var/cache/voicestack (the digest file is written last)."""
    name = release.tarball.format(version=version, arch=ARCH)
    tarball, digest_file = ARTIFACTS / name, ARTIFACTS / f"{name}.{release.algorithm}"
    if tarball.exists() and digest_file.exists():
        return tarball, digest_file.read_text().split()[0], False
    binary = GO / "bin" / release.built
    flags = tuple(release.go_flags(version))
    if _binary_version(binary, release.module, flags, release.reports_version) != version:
        host.require_tools(["go"])
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [host.which("go") or "go", "install", *flags, f"{release.package}@v{version}"]
        say(f"building {release.name} v{version} from the Go module proxy ({release.first_build} the first time; "
            f"cached afterwards); log: {log}")
        rc = background.run_logged(cmd, log, f"building {release.name} v{version}", say, env=go_env())
        if rc != 0 or _binary_version(binary, release.module, flags, release.reports_version) != version:
            raise host.LocalEnvError(f"failed to build {release.name} v{version}: "
                                     f"CGO_ENABLED=0 GOFLAGS=-trimpath {shlex.join(cmd)} exited {rc}; see {log}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = _pack({release.packed: binary.read_bytes()})
    tmp = tarball.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(tarball)
    digest = hashlib.new(release.algorithm, data).hexdigest()
    digest_file.write_text(f"{digest}  {name}\n")
    return tarball, digest, True


def _pack(files: dict[str, bytes]) -> bytes:
    """A reproducible .tar.gz (fixed mtimes and owners), so equal binaries give equal sha256."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime, info.uname, info.gname = len(content), 0o755, 0, "root", "root"
                tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


# ---- the HTTP server ------------------------------------------------------------------------

def www_dir(names: EnvNames) -> Path:
    return names.state_dir / "www"


def base_url(names: EnvNames) -> str:
    return f"http://{names.gateway}:{HTTP_PORT}"


def publish(names: EnvNames, path: Path, under: str) -> str:
    """Make `path` (file or directory) available as <base>/<under>/<name>; returns its URL."""
    target = www_dir(names) / under / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.is_symlink() and os.readlink(target) == str(path):
            return f"{base_url(names)}/{under}/{path.name}"
        target.unlink()
    target.symlink_to(path)
    return f"{base_url(names)}/{under}/{path.name}"


def serve(names: EnvNames) -> str:
    """Serve www_dir on the gateway (idempotent)."""
    www = www_dir(names)
    www.mkdir(parents=True, exist_ok=True)
    if not (host.running("http", names.run_dir) and host.port_open_tcp(names.gateway, HTTP_PORT)):
        cmd = [sys.executable, "-m", "http.server", "--bind", names.gateway, "--directory", str(www), str(HTTP_PORT)]
        host.start_daemon("http", cmd, names.run_dir, names.run_dir / "http.log")
        host.wait_until(f"the artifact server on {base_url(names)} (log: {names.run_dir}/http.log)",
                        lambda: host.port_open_tcp(names.gateway, HTTP_PORT), 10)
    return base_url(names)
