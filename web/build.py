#!/usr/bin/env python3
"""Build the voice page (index.html + app.js + app.css) from the pinned npm packages, once per input.

    python3 web/build.py              # prints the output directory on stdout, progress on stderr
    python3 web/build.py --out-root DIR

The output lands in <out-root>/<sha256 of the inputs, 16 hex>/ (default out-root
/var/cache/voicestack/web, or $VOICESTACK_WEB_CACHE). The inputs are this script,
package.json, package-lock.json and everything under src/; a re-run with the same
inputs prints the same directory and does nothing else. A build happens in a scratch directory
beside it and is renamed into place only when complete, so a crash leaves no half-built page.

Packages come through the host's own npm configuration (its registry or mirror): `npm ci
--ignore-scripts` installs exactly the lockfile, checking every package's sha512 integrity, and
runs no install scripts. Nothing is fetched at page load (no CDN). Needs Node.js >= 18 with npm.
Standard library only, so the operator host's system python3 can run it.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root, for infra.npmlock (standard library only too)
from infra.npmlock import LockfileError, locked_versions  # noqa: E402 - needs the path above

DEFAULT_OUT_ROOT = Path("/var/cache/voicestack/web")
# Browsers the page supports: current Chromium and Firefox (and Safari 16+, untested here).
ESBUILD_ARGS = ["src/app.js", "--bundle", "--minify", "--format=esm", "--target=es2020,chrome110,firefox115,safari16",
                "--legal-comments=eof", "--outdir=dist", "--log-level=warning"]
OUTPUTS = ("index.html", "app.js", "app.css")
MANIFEST = "BUILD.json"


class BuildError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def input_files(root: Path = HERE) -> list[Path]:
    files = [root / "build.py", root / "package.json", root / "package-lock.json"]
    files += sorted(p for p in (root / "src").rglob("*") if p.is_file())
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise BuildError(f"missing build input(s): {', '.join(missing)}")
    return files


def inputs_hash(root: Path = HERE) -> str:
    h = hashlib.sha256()
    for path in input_files(root):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def check_lockfile(root: Path = HERE) -> dict[str, str]:
    """Every package in the lockfile carries a sha512 integrity; returns the direct dependencies' versions."""
    try:
        return locked_versions(root, ("dependencies", "devDependencies"), "`npm install --package-lock-only` in web/")
    except LockfileError as exc:
        raise BuildError(str(exc)) from exc


def run(argv: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} not found: install Node.js 18+ with npm (Debian: apt-get install nodejs npm)") from exc
    if proc.returncode != 0:
        raise BuildError(f"failed to run `{' '.join(argv)}` in {cwd} (exit {proc.returncode}):\n"
                         f"{(proc.stderr or proc.stdout)[-3000:]}")


def file_facts(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9, mtime=0)),
            "sha256": hashlib.sha256(data).hexdigest()}


def build(out_root: Path, root: Path = HERE) -> Path:
    digest = inputs_hash(root)[:16]
    final = out_root / digest
    if (final / MANIFEST).is_file():
        log(f"page already built for these inputs: {final}")
        return final
    versions = check_lockfile(root)
    out_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=out_root))
    try:
        shutil.copy2(root / "package.json", work)
        shutil.copy2(root / "package-lock.json", work)
        shutil.copytree(root / "src", work / "src")
        log(f"npm ci --ignore-scripts ({', '.join(f'{k} {v}' for k, v in versions.items())})")
        run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], work)
        log("bundling with esbuild")
        # The esbuild binary comes from the @esbuild/<platform> optional dependency, so it
        # works without esbuild's (skipped) install script.
        run([str(work / "node_modules" / ".bin" / "esbuild"), *ESBUILD_ARGS], work)
        dist = work / "dist"
        shutil.copy2(work / "src" / "index.html", dist / "index.html")
        for name in OUTPUTS:
            if not (dist / name).is_file():
                raise BuildError(f"the build produced no {name} in {dist}")
        facts = {name: file_facts(dist / name) for name in OUTPUTS}
        (dist / MANIFEST).write_text(json.dumps({"inputs": digest, "packages": versions, "files": facts},
                                                indent=2) + "\n")
        for path in dist.iterdir():
            path.chmod(0o644)   # served by Caddy: world-readable on purpose, nothing secret in it
        dist.chmod(0o755)
        try:
            dist.rename(final)
        except OSError:
            if not (final / MANIFEST).is_file():   # another build won the race: theirs is as good
                raise
        js = facts["app.js"]
        log(f"built {final}: app.js {js['bytes']} B ({js['gzip_bytes']} B gzip), "
            f"app.css {facts['app.css']['bytes']} B")
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-root", type=Path,
                    default=Path(os.environ.get("VOICESTACK_WEB_CACHE") or DEFAULT_OUT_ROOT),
                    help=f"cache directory (default $VOICESTACK_WEB_CACHE or {DEFAULT_OUT_ROOT})")
    args = ap.parse_args(argv)
    try:
        print(build(args.out_root))
    except (BuildError, OSError, ValueError) as exc:
        print(f"error: failed to build the voice page: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
