"""The voice page (web/): built once on the operator's machine, its static files put on the node.

`python3 web/build.py` runs where the deploy runs (it needs Node.js with npm; its output is
cached by the hash of its inputs, so an unchanged page costs nothing). The node gets only the
built files, no Node process:

  /srv/voicestack/web/<inputs digest>/   index.html, app.js, app.css, BUILD.json (0644, nothing secret)
  /srv/voicestack/web/current            symlink to the release Caddy serves, switched atomically

A release directory is complete before the link moves, so an interrupted deploy never serves
an index.html of one build with the app.js of another; older releases are removed afterwards.
"""
from __future__ import annotations

import functools
import json
import shlex
import subprocess
import sys
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import FindFiles, Link
from pyinfra.operations import files

from deploy.inventory import DeployInputError

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "web" / "build.py"
WEB_DIR = "/srv/voicestack/web"
CURRENT = f"{WEB_DIR}/current"
#: What the page consists of (web/build.py OUTPUTS) plus its build facts.
PAGE_FILES = ("index.html", "app.js", "app.css", "BUILD.json")
BUILD_TIMEOUT = 900   # a first `npm ci` + esbuild on a slow machine


@functools.cache
def built_page() -> Path:
    """The built page's directory on this machine (web/build.py; cached per inputs, once per deploy run)."""
    print("building the voice page (web/build.py: npm ci + esbuild, cached by its inputs) ...", file=sys.stderr,
          flush=True)
    argv = [sys.executable, str(BUILD_SCRIPT)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise DeployInputError(f"the voice page build did not finish in {BUILD_TIMEOUT}s: "
                               f"{shlex.join(argv)}") from exc
    if proc.returncode != 0:
        raise DeployInputError(f"failed to build the voice page: {shlex.join(argv)} exited {proc.returncode}\n"
                               f"{proc.stderr.strip()[-2000:]}")
    out = Path(proc.stdout.strip().splitlines()[-1])
    missing = [name for name in PAGE_FILES if not (out / name).is_file()]
    if missing:
        raise DeployInputError(f"web/build.py printed {out}, which lacks {', '.join(missing)}; "
                               "delete that directory and deploy again")
    return out


def release_name(page: Path) -> str:
    """The release directory's name on the node: the build's input digest (BUILD.json)."""
    return str(json.loads((page / "BUILD.json").read_text())["inputs"])


@operation()
def switch_link(path: str, target: str):
    """
    Point the symlink `path` at `target`, atomically (a new link renamed over the old one).

    + path: the link, e.g. "/srv/voicestack/web/current"
    + target: where it points, e.g. "/srv/voicestack/web/0123abcd"
    """
    link = host.get_fact(Link, path=path)
    if link and link.get("link_target") == target:
        return
    q = shlex.quote
    yield f"ln -sfn {q(target)} {q(path)}.new && mv -Tf {q(path)}.new {q(path)}"


@operation()
def prune_releases(directory: str, keep: str):
    """
    Remove release directories under `directory` other than `keep` (and the `current` link).

    + directory: e.g. "/srv/voicestack/web"
    + keep: the release in use, e.g. "0123abcd"
    """
    found = host.get_fact(FindFiles, path=directory, fname="BUILD.json", maxdepth=2) or []
    stale = sorted({Path(p).parent.name for p in found} - {keep, "current"})
    if stale:
        yield "rm -rf " + " ".join(shlex.quote(f"{directory}/{name}") for name in stale)


def voice_page() -> str:
    """Operations that put the built page on the node; returns the directory Caddy serves."""
    page = built_page()
    release = f"{WEB_DIR}/{release_name(page)}"
    files.directory(name=f"Create {WEB_DIR}", path=WEB_DIR, user="root", group="root", mode="755")
    files.directory(name=f"Create {release}", path=release, user="root", group="root", mode="755")
    for name in PAGE_FILES:
        files.put(name=f"Upload the voice page's {name}", src=str(page / name), dest=f"{release}/{name}",
                  user="root", group="root", mode="644")
    switch_link(name=f"Serve {release} at {CURRENT}", path=CURRENT, target=release)
    prune_releases(name=f"Remove older voice page releases under {WEB_DIR}", directory=WEB_DIR,
                   keep=release_name(page))
    return CURRENT
