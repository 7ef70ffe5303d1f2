"""Python wheels for the machines: agent/requirements.txt built on the host, served by it.

Cached under /var/cache/voicestack/wheelhouse/<sha of the requirements>/; served both as a
plain directory (pip --find-links) and as a PEP 503 simple index (pip --index-url).
"""
from __future__ import annotations

import hashlib
import html
import re
import subprocess
import sys
from pathlib import Path

from infra.local import artifacts, host
from infra.local.names import CACHE, EnvNames

WHEELS = CACHE / "wheelhouse"


def requirements_file(repo_root: Path) -> Path:
    return repo_root / "agent" / "requirements.txt"


def build(requirements: Path, log: Path) -> tuple[Path, bool]:
    """(wheel directory, built now?) for `requirements` (one builder at a time)."""
    with host.cache_lock("wheelhouse"):
        return _build(requirements, log)


def _build(requirements: Path, log: Path) -> tuple[Path, bool]:
    """(wheel directory, built now?)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    target = WHEELS / digest
    if (target / ".complete").exists():
        return target, False
    target.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    # The host's own pip configuration decides the index (never named here); the host runs
    # CPython 3.11 on linux x86_64 like the machines, so the wheels fit them.
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-input", "-r", str(requirements), "-w", str(target)]
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise host.LocalEnvError(f"failed to build the wheelhouse: {' '.join(cmd)} exited {rc}; see {log}")
    (target / ".complete").write_text(requirements.read_text())
    return target, True


def _project(wheel: str) -> str:
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def publish(names: EnvNames, wheel_dir: Path) -> tuple[str, str]:
    """Link the wheels into the env's web root and write a simple index; (index URL, find-links URL)."""
    www = artifacts.www_dir(names)
    base = artifacts.base_url(names)
    link = www / "wheels"
    stamp = www / "simple" / ".source"
    if link.is_symlink() and stamp.exists() and stamp.read_text() == str(wheel_dir):
        return f"{base}/simple/", f"{base}/wheels/"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(wheel_dir)
    write_index(www / "simple", wheel_dir, "../../wheels")
    stamp.write_text(str(wheel_dir))
    return f"{base}/simple/", f"{base}/wheels/"


def write_index(simple: Path, wheel_dir: Path, href: str) -> list[str]:
    """A PEP 503 simple index of `wheel_dir` under `simple`, each link with its sha256 (pip checks
    it); `href` is the wheels' URL relative to a project page. Returns the project names."""
    projects: dict[str, list[Path]] = {}
    for whl in sorted(wheel_dir.glob("*.whl")):
        projects.setdefault(_project(whl.name), []).append(whl)
    simple.mkdir(parents=True, exist_ok=True)
    top = ["<!DOCTYPE html><html><body>"]
    for proj, files in sorted(projects.items()):
        (simple / proj).mkdir(exist_ok=True)
        rows = ["<!DOCTYPE html><html><body>"]
        for f in files:
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
            rows.append(f'<a href="{href}/{html.escape(f.name)}#sha256={sha}">{html.escape(f.name)}</a><br>')
        (simple / proj / "index.html").write_text("\n".join(rows + ["</body></html>"]) + "\n")
        top.append(f'<a href="{proj}/">{proj}</a><br>')
    (simple / "index.html").write_text("\n".join(top + ["</body></html>"]) + "\n")
    return sorted(projects)
