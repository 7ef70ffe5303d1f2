"""Release artifacts for the machines, built from the Go module proxy and served by the host.

The machines cannot reach GitHub releases, so livekit-server is built at the pinned version
(`go install …@v<version>`), packed in the upstream release layout
(`livekit_<v>_linux_amd64.tar.gz` holding `livekit-server`) and served over HTTP from the
gateway. The deploy's manifest entry for this env overrides only `url` and `sha256`.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

from infra.local import host
from infra.local.names import CACHE, HTTP_PORT, EnvNames

GO = CACHE / "go"
ARTIFACTS = CACHE / "artifacts"
LIVEKIT_MODULE = "github.com/livekit/livekit-server"
ARCH = "amd64"


def go_env() -> dict[str, str]:
    return dict(os.environ, GOPATH=str(GO), GOMODCACHE=str(GO / "mod"), GOCACHE=str(GO / "build"),
                GOBIN=str(GO / "bin"), CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false",
                PATH=os.environ.get("PATH", "") + ":/usr/local/go/bin")


def _binary_version(binary: Path) -> str | None:
    go = host.which("go")
    if not binary.exists() or go is None:
        return None
    out = host.run([go, "version", "-m", str(binary)], check=False).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "mod" and parts[1] == LIVEKIT_MODULE:
            return parts[2].lstrip("v")
    return None


def livekit_tarball(version: str, log: Path) -> tuple[Path, str, bool]:
    """(tarball, sha256, built now?) for livekit-server `version` (one builder at a time)."""
    with host.cache_lock("livekit"):
        return _livekit_tarball(version, log)


def livekit_binary(version: str) -> Path:
    """The livekit-server of the packed release artifact, unpacked once (for tests on the host)."""
    tarball, digest, _ = livekit_tarball(version, ARTIFACTS / "build.log")
    target = ARTIFACTS / f"livekit-server-{version}-{digest[:12]}"
    if not target.exists():
        with tarfile.open(tarball) as tar:
            member = tar.extractfile("livekit-server")
            if member is None:
                raise host.LocalEnvError(f"{tarball} has no livekit-server inside; delete it to rebuild")
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(member.read())
            tmp.chmod(0o755)
            tmp.replace(target)
    return target


def _livekit_tarball(version: str, log: Path) -> tuple[Path, str, bool]:
    """(tarball, sha256, built now?) for livekit-server `version`, cached under /var/cache/voicestack."""
    name = f"livekit_{version}_linux_{ARCH}.tar.gz"
    tarball, digest_file = ARTIFACTS / name, ARTIFACTS / (name + ".sha256")
    if tarball.exists() and digest_file.exists():
        return tarball, digest_file.read_text().split()[0], False
    binary = GO / "bin" / "server"
    if _binary_version(binary) != version:
        host.require_tools(["go"])
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [host.which("go") or "go", "install", f"{LIVEKIT_MODULE}/cmd/server@v{version}"]
        with open(log, "w") as out:
            import subprocess
            rc = subprocess.run(cmd, env=go_env(), stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0 or _binary_version(binary) != version:
            raise host.LocalEnvError(f"failed to build livekit-server v{version}: "
                                     f"CGO_ENABLED=0 GOFLAGS=-trimpath {' '.join(cmd)} exited {rc}; see {log}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = _pack({"livekit-server": binary.read_bytes()})
    tmp = tarball.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(tarball)
    digest = hashlib.sha256(data).hexdigest()
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
